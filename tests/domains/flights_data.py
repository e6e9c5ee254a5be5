"""Generated flights for the second test domain (tests/domains/flights): deterministic, small, with a
signal worth learning (later hours, some carriers and some routes arrive later), cancelled flights
whose delay and air time are missing (landed as ``NA``, ``null`` or empty), text quoted with ``'``,
and a few rows each contract rule must quarantine."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent / "flights"
FIRST_DAY = dt.date(2026, 6, 1)
AIRPORTS = {"JFK": (40.64, -73.78), "LAX": (33.94, -118.41), "ORD": (41.98, -87.90), "ATL": (33.64, -84.43),
            "SFO": (37.62, -122.38), "DEN": (39.86, -104.67)}
ROUTES = [("JFK", "LAX"), ("LAX", "JFK"), ("ORD", "ATL"), ("ATL", "ORD"), ("SFO", "DEN"), ("DEN", "SFO"),
          ("JFK", "ORD"), ("ATL", "LAX")]
CARRIERS = {"AA": 0.0, "DL": -0.6, "UA": 0.2, "WN": 0.8}      # lateness offset by carrier
ROUTE_LATENESS = {route: (i % 3 - 1) * 0.5 for i, route in enumerate(ROUTES)}
HEADER = "flight_id;carrier;origin;dest;dep_time;distance;air_time;arr_delay;cancelled"
MISSING = ("NA", "null", "")  # how the producer writes a missing value, in turn


@dataclass(frozen=True)
class Landed:
    days: int
    rows: int           # data rows written, bad ones included
    bad: int            # rows the contract must quarantine
    cancelled: int      # good rows of cancelled flights: no arrival delay, no air time
    late: int           # good rows with arr_delay > 15


def miles(a: str, b: str) -> float:
    (la1, lo1), (la2, lo2) = AIRPORTS[a], AIRPORTS[b]
    p1, p2, dl = math.radians(la1), math.radians(la2), math.radians(lo2 - lo1)
    angle = math.acos(min(1.0, math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)))
    return round(3958.8 * angle, 1)


def land(landing: Path, days: int = 75, per_day: int = 36, seed: int = 11) -> Landed:
    """Daily files under ``landing/flights/<day>/flights.csv``."""
    rng = np.random.default_rng(seed)
    rows = bad = cancelled = late = 0
    for d in range(days):
        day = FIRST_DAY + dt.timedelta(days=d)
        lines = [HEADER]
        for i in range(per_day):
            rows += 1
            origin, dest = ROUTES[int(rng.integers(len(ROUTES)))]
            carrier = list(CARRIERS)[int(rng.integers(len(CARRIERS)))]
            hour = int(rng.integers(6, 23))
            dep = dt.datetime(day.year, day.month, day.day, hour, int(rng.integers(0, 60)), tzinfo=dt.timezone.utc)
            distance = miles(origin, dest)
            logit = -1.2 + 0.18 * (hour - 14) + CARRIERS[carrier] + ROUTE_LATENESS[(origin, dest)]
            is_late = rng.random() < 1 / (1 + math.exp(-logit))
            delay = float(rng.integers(16, 180)) if is_late else float(rng.integers(-20, 15))
            is_cancelled = rng.random() < 0.04
            air = str(int(distance / 8.0 + rng.integers(-10, 10)))
            arr = f"{delay:g}"
            broken = (i == 0 and d % 10 == 3) or (i == 1 and d % 10 == 7)
            if is_cancelled:
                air, arr = MISSING[(rows + i) % 3], MISSING[(rows + i + 1) % 3]
            cancelled += is_cancelled and not broken
            late += is_late and not is_cancelled and not broken
            flight = f"{carrier}{100 + i}-{day:%m%d}"
            text = (f"'{carrier}'" if i % 5 == 0 else carrier)  # quoted or not: the same value
            line = (f"{flight};{text};{origin};{dest};{dep.isoformat()};{distance};{air};{arr};"
                    f"{'true' if is_cancelled else 'false'}")
            if i == 0 and d % 10 == 3:       # a lower-case airport code: off the contract's pattern
                line = line.replace(f";{origin};", f";{origin.lower()};", 1)
                bad += 1
            elif i == 1 and d % 10 == 7:     # an unknown carrier: not in the enum
                line = line.replace(f";{text};", ";ZZ;", 1)
                bad += 1
            lines.append(line)
        folder = landing / "flights" / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flights.csv").write_text("\n".join(lines) + "\n")
    return Landed(days, rows, bad, cancelled, late)
