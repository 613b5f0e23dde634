"""The one markdown table writer (tune_study.tables): the report's rows and the benchmark's frames."""
from __future__ import annotations

import math

import pandas as pd

from tune_study.tables import frame_table, md_table


def test_rows_as_the_report_formats_them():
    rows = [{"batch": 8, "acc": "0.812 ± 0.010"}, {"batch": 32, "acc": "a|b"}]
    assert md_table(rows) == "| batch | acc |\n|---|---|\n| 8 | 0.812 ± 0.010 |\n| 32 | a/b |"   # | would end a cell
    assert md_table([]) == "(none)"


def test_a_frame_formats_its_floats_and_leaves_missing_cells_empty():
    df = pd.DataFrame({"model": ["tiny-bert", "minilm"], "batch_size": [8, 1024],
                       "samples_per_s": [1234.5678, math.nan], "error": [None, "OOM"]})
    assert frame_table(df) == ("| model | batch_size | samples_per_s | error |\n|---|---|---|---|\n"
                               "| tiny-bert | 8 | 1.23e+03 |  |\n| minilm | 1024 |  | OOM |")
    assert frame_table(df[["samples_per_s"]], ".4g").splitlines()[2] == "| 1235 |"
    assert frame_table(df.iloc[:0]) == "| model | batch_size | samples_per_s | error |\n|---|---|---|---|"
