"""NAS-Bench-201 (Dong & Yang, ICLR 2020): NoisyDARTS searched on the benchmark's cell space and
network (``python -m ndarts.search --space nas-bench-201``), and the found cell looked up in the
benchmark (``python -m ndarts.nasbench201 RUN_DIR --benchmark FILE``)."""
from .lookup import DATASETS, load_nb201_genotype, lookup, open_benchmark
from .network import Nb201SearchCell, Nb201SearchNetwork, ResidualReduction
from .space import EDGES, Nb201Genotype, derive_nb201_genotype

__all__ = ["DATASETS", "EDGES", "Nb201Genotype", "Nb201SearchCell", "Nb201SearchNetwork", "ResidualReduction",
           "derive_nb201_genotype", "load_nb201_genotype", "lookup", "open_benchmark"]
