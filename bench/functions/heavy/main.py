"""A function whose import is heavy: numpy and pandas (installed from requirements.txt)."""

import numpy as np
import pandas as pd


def handler(event, context):
    frame = pd.DataFrame({"x": np.arange(8)})
    return {"sum": int(frame["x"].sum()), "numpy": np.__version__, "pandas": pd.__version__}
