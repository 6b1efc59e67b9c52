#!/usr/bin/env python3
"""Deterministic generator of transactions CSV feeds for Silverline's sample data and benchmarks.

The same --seed and --rows always give byte-identical output. Invalid rows cycle through every error kind
(SCHEMA, NULL_VALUE, TYPE, VALUE, TIMESTAMP, DUPLICATE_KEY) so even a small file holds each; exact duplicates
repeat an earlier valid row verbatim. Valid rows exercise trimming, quoted fields holding commas, UTC offsets that
cross a month boundary, fractions and leap days.

    python3 bench/generate.py --rows 5000000 --invalid-rate 0.015 --duplicate-rate 0.003 --out big.csv
"""
import argparse
import random
import sys

HEADER = "TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp"
CURRENCIES = ["EUR", "USD", "GBP", "CHF", "JPY"]
KINDS = ["SCHEMA", "NULL", "TYPE", "VALUE", "TIMESTAMP", "DUPLICATE_KEY"]
DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def days_in(year, month):
    if month == 2 and (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return 29
    return DAYS[month - 1]


def timestamp(rng):
    year = rng.choice((2023, 2024))
    month = rng.randint(1, 12)
    day = rng.randint(1, days_in(year, month))
    base = f"{year:04d}-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    style = rng.random()
    if style < 0.1:
        base += f".{rng.randint(0, 999999):06d}"
    zone = rng.random()
    if zone < 0.6:
        return base + "Z"
    if zone < 0.9:
        sign = rng.choice("+-")
        return base + f"{sign}{rng.randint(0, 12):02d}:{rng.choice((0, 30)):02d}"
    return base


def amount(rng):
    whole = rng.randint(0, 99999)
    decimals = rng.choice(("", ".5", ".25", ".99", ".07"))
    sign = "-" if rng.random() < 0.05 else ""
    return f"{sign}{whole}{decimals}"


def customer(rng):
    c = f"C{rng.randint(0, 999999):06d}"
    if rng.random() < 0.01:
        return f'"{c}, EU"'
    return c


def valid_row(rng, i):
    fields = [f"TX{i:010d}", customer(rng), amount(rng), rng.choice(CURRENCIES), timestamp(rng)]
    if rng.random() < 0.02:
        fields[1] = f"  {fields[1]} "
    return fields


def broken_row(rng, kind, i, earlier_ids):
    f = valid_row(rng, i)
    if kind == "SCHEMA":
        return f[:4] if rng.random() < 0.5 else f + ["extra"]
    if kind == "NULL":
        f[rng.choice((1, 2, 3, 4))] = rng.choice(("", "   "))
    elif kind == "TYPE":
        f[2] = rng.choice(('"1,234.50"', "12.345", "1e3", "abc", "12.3.4", "--5"))
    elif kind == "VALUE":
        f[3] = rng.choice(("usd", "XYZ", "Eur", "EURO"))
    elif kind == "TIMESTAMP":
        f[4] = rng.choice((
            "2024-01-15 10:00:00", "2024-01-15", "2023-02-29T10:00:00Z", "2024-13-01T00:00:00Z",
            "20240115T100000Z", "2024-04-31T12:00:00Z", "2024-01-15T25:00:00Z", "yesterday",
        ))
    elif kind == "DUPLICATE_KEY":
        f[0] = earlier_ids[rng.randrange(len(earlier_ids))] if earlier_ids else f[0]
    return f


def generate(rows, seed, invalid_rate, duplicate_rate, out):
    rng = random.Random(seed)
    out.write(HEADER + "\n")
    recent_valid = []  # (id, line) of recent valid rows, for duplicates
    written = 0
    next_id = 0
    kind_cursor = 0
    while written < rows:
        roll = rng.random()
        if roll < duplicate_rate and recent_valid:
            line = recent_valid[rng.randrange(len(recent_valid))][1]
        elif roll < duplicate_rate + invalid_rate:
            kind = KINDS[kind_cursor % len(KINDS)]
            kind_cursor += 1
            ids = [r[0] for r in recent_valid]
            line = ",".join(broken_row(rng, kind, next_id, ids))
            next_id += 1
        else:
            fields = valid_row(rng, next_id)
            next_id += 1
            line = ",".join(fields)
            recent_valid.append((fields[0], line))
            if len(recent_valid) > 1000:
                recent_valid.pop(rng.randrange(len(recent_valid)))
        out.write(line + "\n")
        written += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--invalid-rate", type=float, default=0.015)
    p.add_argument("--duplicate-rate", type=float, default=0.003)
    p.add_argument("--out", default="-")
    a = p.parse_args()
    out = sys.stdout if a.out == "-" else open(a.out, "w", newline="\n", buffering=1 << 20)
    generate(a.rows, a.seed, a.invalid_rate, a.duplicate_rate, out)
    out.close()


if __name__ == "__main__":
    main()
