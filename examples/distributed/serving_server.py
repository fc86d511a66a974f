"""The main process of the distributed matmul example (MindSpore's serving_server.py): waits for the 8 agents, then
serves gRPC and REST. `--grpc` / `--rest` change the listeners (defaults 127.0.0.1:5500 and 127.0.0.1:1500)."""

import argparse
import os

from rustserve import server
from rustserve.server import distributed

HERE = os.path.dirname(os.path.abspath(__file__))


def start() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", default="127.0.0.1:5500")
    parser.add_argument("--rest", default="127.0.0.1:1500")
    args = parser.parse_args()
    distributed.start_servable(
        HERE,
        "matmul",
        rank_table_json_file=os.path.join(HERE, "ranks", "rank_table.json"),
        version_number=1,
        distributed_address="127.0.0.1:6200",
    )
    server.start_grpc_server(args.grpc)
    server.start_restful_server(args.rest)


if __name__ == "__main__":
    start()
