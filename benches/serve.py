"""Starts rustserve for `benches/compare.py` through MindSpore Serving's Python API (so `num_parallel_workers` can be
set per servable), prints `ready` and serves until SIGINT / SIGTERM.

`python benches/serve.py --dir DIR --servable NAME [--workers N] --grpc 127.0.0.1:5500 --rest 127.0.0.1:1500`
"""

from __future__ import annotations

import argparse

from rustserve import server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--servable", required=True)
    parser.add_argument("--workers", type=int, default=0, help="num_parallel_workers (0: MindSpore's default)")
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--rest", required=True)
    args = parser.parse_args()
    config = server.ServableStartConfig(args.dir, args.servable, num_parallel_workers=args.workers)
    server.start_servables(config)
    server.start_grpc_server(args.grpc)
    server.start_restful_server(args.rest)
    print("ready", flush=True)
    # Returning keeps the servers running until SIGINT / SIGTERM, as in MindSpore Serving.


if __name__ == "__main__":
    main()
