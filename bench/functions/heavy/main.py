"""A function whose import is heavy: numpy and pandas (installed from requirements.txt)."""

import time

import numpy as np
import pandas as pd


def handler(event, context):
    time.sleep((event or {}).get("sleep", 0))  # a burst holds its instances (cold_start.py)
    frame = pd.DataFrame({"x": np.arange(8)})
    return {"sum": int(frame["x"].sum()), "numpy": np.__version__, "pandas": pd.__version__}
