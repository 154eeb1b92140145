"""Per-sample location and date metadata (Dynamic MLP's extra input): latitude, longitude and date -> a small
float32 vector. Shared by the training side (dynamic_mlp) and common.deploy, which runs an exported model without
the method folders.

Encoding (the authors' recipe): lat' = lat / 90, lon' = lon / 180, d' = 2 * day_of_year / days_in_year - 1 (leap
years have 366 days; the year and the time of day are ignored), each in [-1, 1]; the vector is
[sin(pi v) for v in values] + [cos(pi v) for v in values], values = [lat', lon', d'] for ``geo_temporal``,
[lat', lon'] for ``geo``, [d'] for ``temporal`` (sizes 6 / 4 / 2).

Missing metadata: when any of latitude, longitude or date is missing the whole vector is zeros (an "unknown"
token the network learns to read), whatever subset is used, as in the reference. Unlike the reference, a NaN value
counts as missing (the iNat21 files write missing coordinates as null, other sources as NaN).

List files carry the three values as extra columns: ``relative/path label lat lon YYYY-MM-DD``, with ``nan`` (or
``none`` / ``null`` / ``-``) for a missing value.
"""
import datetime
import math
import re

import numpy as np

from common.data.datasets import DataError

SUBSETS = {"geo_temporal": ("lat", "lon", "date"), "geo": ("lat", "lon"), "temporal": ("date",)}
MISSING_WORDS = {"", "nan", "none", "null", "na", "n/a", "-"}
_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:$|[T ])")


def input_dim(subset):
    """6, 4 or 2: the size of the encoded vector for a metadata subset."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown metadata subset '{subset}'; use one of {', '.join(SUBSETS)}")
    return 2 * len(SUBSETS[subset])


def is_leap_year(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def date_ratio(date):
    """Day of the year scaled to (-1, 1]: 1 January -> 2/365 - 1 (2/366 - 1 in a leap year), 31 December -> 1."""
    days = 366 if is_leap_year(date.year) else 365
    return 2.0 * date.timetuple().tm_yday / days - 1.0


def parse_date(text):
    """'YYYY-MM-DD' (anything after a space or 'T' is ignored, e.g. iNat's '2018-05-29 14:35:00+00:00') ->
    datetime.date, or None when the value is missing. Raises ValueError for a value that is not a date."""
    if text is None:
        return None
    text = str(text).strip()
    if text.lower() in MISSING_WORDS:
        return None
    m = _DATE.match(text)
    if not m:
        raise ValueError(f"date '{text}' does not parse (expected YYYY-MM-DD)")
    try:
        return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as e:
        raise ValueError(f"date '{text}' is not a valid date ({e})") from None


def parse_coordinate(value, what, limit):
    """A latitude / longitude as float, or None when missing (None, NaN, 'nan', ...). Raises ValueError for text
    that is not a number and for a value outside [-limit, limit]."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in MISSING_WORDS:
            return None
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} '{value}' is not a number") from None
    value = float(value)
    if math.isnan(value):
        return None
    if not -limit <= value <= limit:
        raise ValueError(f"{what} {value:g} is outside [-{limit}, {limit}]")
    return value


def encode(lat, lon, date, subset="geo_temporal"):
    """Parsed values (None or NaN for missing) -> float32 vector of size input_dim(subset)."""
    if lat is None or lon is None or date is None or math.isnan(lat) or math.isnan(lon):
        return np.zeros(input_dim(subset), dtype="float32")
    scaled = {"lat": lat / 90.0, "lon": lon / 180.0, "date": date_ratio(date)}
    values = np.array([scaled[k] for k in SUBSETS[subset]], dtype="float64")
    return np.concatenate([np.sin(math.pi * values), np.cos(math.pi * values)]).astype("float32")


def parse_columns(columns):
    """The extra list-file columns (strings) -> (lat, lon, date) with None for missing values."""
    if len(columns) < 3:
        raise ValueError(f"expected the metadata columns 'lat lon YYYY-MM-DD' after the label, got "
                         f"{len(columns)} column(s): {' '.join(columns) or '(none)'}")
    return (parse_coordinate(columns[0], "latitude", 90.0), parse_coordinate(columns[1], "longitude", 180.0),
            parse_date(columns[2]))


class MetadataEncoder:
    """`meta_fn` for the engine: Sample (extra columns lat lon date) -> encoded float32 vector."""

    def __init__(self, subset="geo_temporal"):
        input_dim(subset)
        self.subset = subset

    def __call__(self, sample):
        try:
            return encode(*parse_columns(sample.extra), subset=self.subset)
        except ValueError as e:
            raise DataError(f"{sample.origin}: {e}") from None

    def check(self, samples):
        """Parse every sample once (before training starts), so a bad value fails early, naming its line.
        Returns the number of samples whose metadata is missing."""
        missing = 0
        for s in samples:
            try:
                lat, lon, date = parse_columns(s.extra)
            except ValueError as e:
                raise DataError(f"{s.origin}: {e}") from None
            missing += lat is None or lon is None or date is None
        return missing


# the source of an exported model's metadata input, as inference.json records it (common.export) and common.deploy
# reads it: the list-file columns (or -lat / -lon / -date) and the encoding above
ENCODING = "lat_lon_date"
COLUMNS = ("lat", "lon", "date")


def export_source(subset="geo_temporal"):
    input_dim(subset)
    return {"encoding": ENCODING, "subset": subset, "columns": list(COLUMNS)}
