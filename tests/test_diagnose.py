"""benchmarks/diagnose.py's reading of a confusion matrix: what each class's pixels are read as."""

import torch
from conftest import load_benchmark


def test_reads_gives_each_class_its_top_readings_in_percent_of_its_pixels():
    d = load_benchmark("diagnose")
    from usis.data.synthetic import CLASS_NAMES, NUM_CLASSES

    hist = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    pole, building, sidewalk, tree = (CLASS_NAMES.index(n) for n in ("pole", "building", "sidewalk", "tree"))
    hist[pole, building], hist[pole, sidewalk], hist[pole, pole], hist[pole, tree] = 740, 155, 100, 5
    hist[tree, tree] = 10
    out = d.reads(hist)
    assert out["pole"] == {"building": 74.0, "sidewalk": 15.5, "pole": 10.0}  # top 3, the 0.5 % reading left out
    assert out["tree"] == {"tree": 100.0}
    assert "sky" not in out  # no pixels: no reading
