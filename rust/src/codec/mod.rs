//! Wire formats <-> core types, one file per format. No routing or scheduling here.
