"""Calibration and evaluation data: where samples come from (one place per kind of source),
checked against the model, and planned for a run (held-out split, batch size).

    arrays.py  DataSet: samples in memory (.npz, directories, synthesized inputs)
    stream.py  CalibrationSource (the protocol every stage reads) and StreamSource
    load.py    load_data: any accepted input -> a checked source
    plan.py    plan(): the fit / held-out / eval sets and the batch size of a run
"""

from .arrays import DataSet, InputSpec, input_specs, synthesize
from .load import LABELS, load_data
from .plan import Calibration, plan
from .stream import CalibrationSource, StreamSource

__all__ = ["CalibrationSource", "DataSet", "StreamSource", "InputSpec", "input_specs",
           "load_data", "synthesize", "LABELS", "Calibration", "plan"]
