"""Regenerates the quickstart's synthetic transactions (seeded, so the files are stable).

    python make_data.py
"""

import csv
import math
import random

COLUMNS = ["amount", "hour", "merchant_risk", "distance_km", "card_age_days", "is_fraud"]


def rows(n: int, seed: int) -> list[list[object]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        amount = round(rng.lognormvariate(3.5, 1.0), 2)
        hour = rng.randrange(24)
        merchant_risk = round(rng.random(), 3)
        distance_km = round(rng.expovariate(1 / 20), 1)
        card_age_days = rng.randrange(1, 3650)
        night = 1.0 if hour < 6 else 0.0
        score = (-5.0 + 0.012 * amount + 1.6 * night + 3.0 * merchant_risk
                 + 0.02 * distance_km - 0.0006 * card_age_days)
        is_fraud = int(rng.random() < 1 / (1 + math.exp(-score)))
        out.append([amount, hour, merchant_risk, distance_km, card_age_days, is_fraud])
    return out


def write(path: str, n: int, seed: int) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows(n, seed))


if __name__ == "__main__":
    write("data/transactions.csv", 2000, seed=1)
    write("data/transactions-holdout.csv", 600, seed=2)
