"""The metadata input of Dynamic MLP (latitude, longitude and date -> a small float32 vector). The code lives in
common/metadata.py, so that common.deploy can encode it for an exported model without importing this folder."""
from common.metadata import (MISSING_WORDS, SUBSETS, MetadataEncoder, date_ratio, encode, export_source,  # noqa: F401
                             input_dim, is_leap_year, parse_columns, parse_coordinate, parse_date)
