"""Calibration and evaluation data: where samples come from (one place per kind of source),
checked against the model, and planned for a run (held-out split, batch size).

    layout.py  which axis of each model input holds the samples (none: fed whole), checks
    arrays.py  DataSet: samples in memory or memory-mapped (.npz, .npy, synthesized inputs)
    files.py   lazy files: memory-mapped .npz/.npy, FileSource (a directory, file by file)
    images.py  images and --calib-preprocess (resize, mean/std, layout, or a user function)
    stream.py  CalibrationSource (the protocol every stage reads), StreamSource, batching
               by shape
    load.py    load_data: any accepted input -> a checked source
    plan.py    plan(): the fit / held-out / eval sets and the batch size of a run;
               probe_batch(): runs of one sample where an input fed whole pins the batch;
               fit_runs(): fewer samples a run where one sample's largest tensor is big
"""

from .arrays import DataSet, synthesize
from .files import LABELS, FileSource
from .layout import InputSpec, Layout, input_specs
from .load import load_data
from .plan import Calibration, fit_runs, plan, probe_batch
from .stream import CalibrationSource, StreamSource

__all__ = ["CalibrationSource", "DataSet", "FileSource", "StreamSource", "InputSpec", "Layout",
           "input_specs", "load_data", "synthesize", "LABELS", "Calibration", "plan", "probe_batch",
           "fit_runs"]
