"""Built-in datasets: loaders returning uint8 RawData, and the DataBundle that serves them on a device."""
from kdbench.config import DataConfig
from kdbench.data.bundle import AUGMENTATIONS, NORMALIZATIONS, DataBundle
from kdbench.data.sources import DATASETS, RawData

__all__ = ["AUGMENTATIONS", "DATASETS", "NORMALIZATIONS", "DataBundle", "DataConfig", "RawData"]
