"""The agents of the distributed matmul example (MindSpore's serving_agent.py): one process per rank, on this
machine, registered with the main process at 127.0.0.1:6200. Runs until Ctrl-C."""

import os

from rustserve.server import distributed

HERE = os.path.dirname(os.path.abspath(__file__))


def start_agents() -> None:
    ranks = os.path.join(HERE, "ranks")
    model_files = [os.path.join(ranks, f"rank{i}", "model.onnx") for i in range(8)]
    group_configs = [os.path.join(ranks, f"rank{i}", "group_config.json") for i in range(8)]
    distributed.startup_agents(
        distributed_address="127.0.0.1:6200",
        model_files=model_files,
        group_config_files=group_configs,
        agent_start_port=7000,
        intra_op_threads=1,
    )


if __name__ == "__main__":
    start_agents()
