"""``python -m ndarts``: the commands ndarts has (each is ``python -m ndarts.<command>``)."""
import sys

COMMANDS = {
    "search": "NoisyDARTS architecture search (python -m ndarts.search --fused: the embedded digits)",
    "train": "train a cell from scratch (a zoo name, a search run or its genotype.json, JSON, DARTS's Genotype(...))",
    "evaluate": "test loss and accuracy of a training checkpoint",
    "genotype": "the model zoo and any genotype: list, info (cells, parameters, multiply-adds), draw, "
                "predict (NAS-Bench-301)",
    "plots": "figures of a search or training run directory",
    "nasbench201": "a NAS-Bench-201 cell (search --space nas-bench-201) and its accuracies in the benchmark",
}


def main() -> int:
    print("ndarts: NoisyDARTS with fused Triton kernels. Commands (python -m ndarts.<command> --help):")
    for name, what in COMMANDS.items():
        print(f"  {name:<11} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
