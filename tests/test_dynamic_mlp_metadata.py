"""Dynamic MLP metadata: the encoding against hand-computed values and the reference's own dataset code, missing and
NaN values, subsets, and clear errors for bad values."""
import datetime
import math
import os

import numpy as np
import pytest

from common.data.datasets import DataError, Sample
from dynamic_mlp.metadata import (MetadataEncoder, date_ratio, encode, input_dim, is_leap_year, parse_columns,
                                  parse_date)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "dynamic_mlp", "metadata_reference.npz")


def vec(lat, lon, date, subset="geo_temporal"):
    return MetadataEncoder(subset)(Sample("x.jpg", 0, (lat, lon, date), "list.txt:7"))


def test_day_of_year_scaling_is_leap_year_aware():
    # 1 March is day 61 of 2020 (leap) and day 60 of 2019
    assert date_ratio(datetime.date(2020, 3, 1)) == pytest.approx(2 * 61 / 366 - 1)
    assert date_ratio(datetime.date(2019, 3, 1)) == pytest.approx(2 * 60 / 365 - 1)
    assert date_ratio(datetime.date(2020, 2, 29)) == pytest.approx(2 * 60 / 366 - 1)
    assert date_ratio(datetime.date(2020, 12, 31)) == 1.0 and date_ratio(datetime.date(2019, 12, 31)) == 1.0
    assert date_ratio(datetime.date(2021, 1, 1)) == pytest.approx(2 / 365 - 1)
    assert [is_leap_year(y) for y in (1900, 2000, 2019, 2020, 2100)] == [False, True, False, True, False]
    assert date_ratio(datetime.date(1900, 3, 1)) == pytest.approx(2 * 60 / 365 - 1)
    assert date_ratio(datetime.date(2000, 3, 1)) == pytest.approx(2 * 61 / 366 - 1)


def test_encoding_by_hand():
    # lat 45 -> 0.5, lon -90 -> -0.5, 1 April 2020 (day 92 of 366)
    d = 2 * 92 / 366 - 1
    want = [1.0, -1.0, math.sin(math.pi * d), 0.0, 0.0, math.cos(math.pi * d)]
    np.testing.assert_allclose(vec("45", "-90", "2020-04-01"), want, atol=1e-7)
    assert vec("45", "-90", "2020-04-01").dtype == np.float32
    # order is [sin lat, sin lon, sin date, cos lat, cos lon, cos date]
    np.testing.assert_allclose(vec("0", "180", "2019-12-31"), [0, 0, 0, 1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(vec("45", "-90", "2020-04-01", "geo"), [1, -1, 0, 0], atol=1e-7)
    np.testing.assert_allclose(vec("45", "-90", "2020-04-01", "temporal"),
                               [math.sin(math.pi * d), math.cos(math.pi * d)], atol=1e-7)
    assert [input_dim(s) for s in ("geo_temporal", "geo", "temporal")] == [6, 4, 2]
    # the time of day does not matter; the year only through its length
    np.testing.assert_array_equal(vec("1", "2", "2018-05-29 14:35:00+00:00"), vec("1", "2", "2017-05-29"))


@pytest.mark.parametrize("row", [("nan", "10", "2020-01-05"), ("10", "NaN", "2020-01-05"), ("10", "20", "nan"),
                                 ("none", "20", "2020-01-05"), ("10", "20", "-"), ("nan", "nan", "nan")])
def test_any_missing_value_gives_the_all_zero_vector(row):
    for subset in ("geo_temporal", "geo", "temporal"):  # all or nothing, as in the reference
        out = vec(*row, subset=subset)
        assert out.shape == (input_dim(subset),) and not out.any()


def test_nan_floats_count_as_missing():
    assert not encode(float("nan"), 3.0, datetime.date(2020, 1, 1)).any()
    assert parse_columns(("nan", "1.5", "2020-01-01"))[0] is None
    assert encode(1.0, 3.0, datetime.date(2020, 1, 1)).all()


def test_matches_the_reference_dataset_code():
    with np.load(FIXTURE) as z:
        rows = [tuple(r.split("\t")) for r in z["rows"]]
        for subset in ("geo_temporal", "geo", "temporal"):
            got = np.stack([vec(*r, subset=subset) for r in rows])
            np.testing.assert_allclose(got, z[subset], atol=2e-7, err_msg=subset)
            assert not z[subset][-1].any()  # the fixture's last row is missing metadata


@pytest.mark.parametrize("row, message", [
    (("10", "20", "2019-02-29"), "2019-02-29' is not a valid date"),
    (("10", "20", "31/12/2019"), "does not parse"),
    (("10", "20", "2019-1"), "does not parse"),
    (("north", "20", "2019-01-01"), "latitude 'north' is not a number"),
    (("95", "20", "2019-01-01"), "latitude 95 is outside"),
    (("10", "-181", "2019-01-01"), "longitude -181 is outside"),
    (("10", "20"), "expected the metadata columns"),
])
def test_bad_values_name_the_line(row, message):
    with pytest.raises(DataError) as e:
        MetadataEncoder()(Sample("x.jpg", 0, row, "train_list.txt:12"))
    assert "train_list.txt:12" in str(e.value) and message in str(e.value)


def test_check_counts_missing_and_fails_early():
    enc = MetadataEncoder()
    good = [Sample("a", 0, ("1", "2", "2020-01-01"), "l:1"), Sample("b", 0, ("nan", "nan", "nan"), "l:2")]
    assert enc.check(good) == 1
    with pytest.raises(DataError, match="l:3: date '2020-13-01'"):
        enc.check(good + [Sample("c", 0, ("1", "2", "2020-13-01"), "l:3")])
    assert parse_date("2020-02-29") == datetime.date(2020, 2, 29) and parse_date("null") is None
    with pytest.raises(ValueError, match="unknown metadata subset"):
        MetadataEncoder("place")
