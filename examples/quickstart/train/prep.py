"""Drops unusable rows (missing or negative amounts) from the raw transactions."""

import argparse
import csv

from mlinfra_run import log_metric

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

kept = dropped = 0
with open(args.data, newline="") as src, open(args.out, "w", newline="") as dst:
    reader = csv.DictReader(src)
    writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [])
    writer.writeheader()
    for row in reader:
        if any(v == "" for v in row.values()) or float(row["amount"]) < 0:
            dropped += 1
            continue
        writer.writerow(row)
        kept += 1
log_metric("rows_kept", kept)
log_metric("rows_dropped", dropped)
print(f"kept {kept} rows, dropped {dropped}")
