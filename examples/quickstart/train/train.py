"""Trains the fraud classifier and writes it as ONNX (one float input, 'features')."""

import argparse
import csv
import json

import numpy as np
from mlinfra_run import log_metric, log_param
from onnx.helper import set_model_props
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["amount", "hour", "merchant_risk", "distance_km", "card_age_days"]

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--C", type=float, default=1.0)
parser.add_argument("--max-iter", type=int, default=200)
args = parser.parse_args()

with open(args.data, newline="") as f:
    rows = list(csv.DictReader(f))
X = np.array([[float(r[c]) for c in FEATURES] for r in rows], dtype=np.float32)
y = np.array([int(r["is_fraud"]) for r in rows])
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.2, random_state=0,
                                                  stratify=y)
log_param("C", args.C)
log_param("max_iter", args.max_iter)

model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=args.max_iter))
for step, fraction in enumerate((0.25, 0.5, 1.0), start=1):
    n = max(50, int(len(X_train) * fraction))
    model.fit(X_train[:n], y_train[:n])
    log_metric("val_auc", roc_auc_score(y_val, model.predict_proba(X_val)[:, 1]), step=step)

onnx_model = convert_sklearn(
    model, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
    options={LogisticRegression: {"zipmap": False}}, target_opset=17)
# The columns' names: MLflow-style tables (dataframe_split, CSV) are matched by name.
set_model_props(onnx_model, {"feature_names": json.dumps(FEATURES)})
with open(args.model, "wb") as f:
    f.write(onnx_model.SerializeToString())
print(f"wrote {args.model}")
