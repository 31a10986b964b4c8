"""Every published-dataset converter refuses a scan with NaN, infinite or constant voxels by name and writes
nothing. NaN/Inf are written into the NIfTI sources, where SimpleITK would read them as 0: the converters'
one reader reads the file's own voxels."""
import glob
import os
import re

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (acdc_patients, conv_env, leftovers, make_acdc_raw, make_amos_raw,  # noqa: F401
                              make_brats_raw, make_synapse_raw)
from nnunetv2_semisup_conversion import convert_acdc, convert_amos, convert_brats, convert_synapse
from nnunetv2_semisup_conversion.errors import ConversionError
from test_convert_amos import TR, VA
from test_convert_brats import TEST as BRATS_TEST, TRAIN as BRATS_TRAIN, VAL as BRATS_VAL
from test_convert_synapse import IDS as SYNAPSE_IDS

# converter, source builder, arguments, glob of its image files (never labels)
CONVERTERS = {
    "Synapse": (convert_synapse, lambda r: make_synapse_raw(r, SYNAPSE_IDS, "rawdata"), [],
                "RawData/Training/img/*.nii.gz"),
    "AMOS": (convert_amos, lambda r: make_amos_raw(r, TR, VA), [], "amos22/images*/*.nii.gz"),
    "BraTS2019": (convert_brats, lambda r: make_brats_raw(r, BRATS_TRAIN + BRATS_VAL + BRATS_TEST), [],
                  "**/*_flair.nii.gz"),
    "ACDC": (convert_acdc, lambda r: make_acdc_raw(r, acdc_patients()), ["--num-labeled", "3"],
             "database/*/*/patient*_frame[0-9][0-9].nii.gz"),
}


def _poison(path, kind):
    img = sitk.ReadImage(path)
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    if kind == "nan":
        a.flat[:3] = np.nan
    elif kind == "inf":
        a.flat[:2] = np.inf
    else:
        a[...] = 7.0
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    sitk.WriteImage(out, path)


@pytest.mark.parametrize("kind,expected", [("nan", r"3 NaN voxel\(s\)"), ("inf", r"2 infinite voxel\(s\)"),
                                           ("constant", r"constant image")])
@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_converter_refuses_a_bad_scan_and_writes_nothing(name, kind, expected, tmp_path, conv_env):
    module, build, args, pattern = CONVERTERS[name]
    src = build(str(tmp_path / "src"))
    files = sorted(glob.glob(os.path.join(src, pattern), recursive=True))
    assert files, pattern
    for f in files:  # every scan: whichever case the converter reads first is a bad one
        _poison(f, kind)
    with pytest.raises(ConversionError, match=expected) as e:
        module.run(["-i", src, "-d", "700", *args])
    assert re.search(r"\.nii\.gz|case", str(e.value)), str(e.value)  # names the file or the case
    assert leftovers(conv_env) == []
