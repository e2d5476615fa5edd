#!/usr/bin/python3
"""Write the tiny .npy fixtures of tests/test_npy.c into tests/data/npy/ (or argv[1]).

Run with a python that has numpy (on Debian 12: /usr/bin/python3, numpy 1.24):
    /usr/bin/python3 scripts/make-npy-fixtures.py [OUTDIR]
Values follow v(i, j) = 100 i + j + 0.25 (exact in float32), which the test recomputes.
"""
import io
import os
import sys

import numpy as np
import numpy.lib.format as fmt


def values(rows, cols=None, dtype=np.float64, order="C"):
    i, j = np.meshgrid(np.arange(rows), np.arange(cols or 1), indexing="ij")
    a = (100.0 * i + j + 0.25).astype(dtype)
    if cols is None:
        a = a[:, 0].copy()
    return np.asarray(a, order=order)


def save(out, name, arr, version=None, allow_pickle=False):
    with open(os.path.join(out, name), "wb") as f:
        fmt.write_array(f, arr, version=version, allow_pickle=allow_pickle)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "npy")
    os.makedirs(out, exist_ok=True)

    # Readable files: C / Fortran order, float64 / float32, versions 1.0 / 2.0 / 3.0, 1-D.
    save(out, "c_f8.npy", values(5, 3))
    save(out, "f_f8.npy", values(5, 3, order="F"))
    save(out, "c_f4.npy", values(5, 3, np.float32))
    save(out, "f_f4.npy", values(5, 3, np.float32, order="F"))
    save(out, "v2_f8.npy", values(4, 3), version=(2, 0))
    save(out, "v3_f4_fortran.npy", values(4, 3, np.float32, order="F"), version=(3, 0))
    save(out, "d1_f8.npy", values(7))
    save(out, "d1_f4_v2.npy", values(6, dtype=np.float32), version=(2, 0))
    save(out, "zero_rows.npy", np.zeros((0, 3)))

    # Unsupported content.
    save(out, "int64.npy", np.arange(6, dtype="<i8").reshape(2, 3))
    save(out, "complex.npy", np.ones((2, 3), dtype="<c16"))
    save(out, "bigendian.npy", values(2, 3).astype(">f8"))
    save(out, "object.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    save(out, "structured.npy", np.zeros(3, dtype=[("a", "<f8"), ("b", "<f8")]))
    save(out, "zerod.npy", np.float64(1.5))
    save(out, "threed.npy", np.zeros((2, 2, 2)))

    # Non-finite values: first bad value in C order at (1, 2) = nan; (2, 0) = -inf.
    a = values(4, 3)
    a[1, 2], a[3, 0] = np.nan, np.inf
    save(out, "nan.npy", a)
    a = values(4, 3)
    a[2, 0], a[3, 1] = -np.inf, np.inf
    save(out, "inf.npy", a)
    a = values(5, 3, order="F")
    a[3, 1], a[4, 0] = np.nan, np.nan  # the column-major first would be (4, 0)
    save(out, "f_nan.npy", a)

    # Broken files.
    open(os.path.join(out, "empty.npy"), "wb").close()
    with open(os.path.join(out, "not_npy.npy"), "w") as f:
        f.write("1.0,2.0,3.0\n4.0,5.0,6.0\n")
    b = io.BytesIO()
    fmt.write_array(b, values(5, 3))
    good = b.getvalue()
    with open(os.path.join(out, "truncated.npy"), "wb") as f:
        f.write(good[:128 + 20])  # 5 x 3 float64 needs 120 bytes of data
    with open(os.path.join(out, "truncated_header.npy"), "wb") as f:
        f.write(good[:40])
    with open(os.path.join(out, "shape_larger.npy"), "wb") as f:  # header says (100, 3)
        h = io.BytesIO()
        fmt.write_array_header_1_0(h, {"descr": "<f8", "fortran_order": False, "shape": (100, 3)})
        f.write(h.getvalue() + values(5, 3).tobytes())
    with open(os.path.join(out, "bad_version.npy"), "wb") as f:
        f.write(good[:6] + b"\x04\x00" + good[8:])

    # Headers alone, as numpy writes them, to compare ar_npy_format_header with.
    for rows, cols, fortran in [(5, 3, False), (3, 4, True), (0, 5, False), (1, 1, False),
                                (1000000, 64, False), (123456789012345678, 2, False),
                                (2, 1234567890123, True), (7, 1234567890123456789, False)]:
        h = io.BytesIO()
        fmt.write_array_header_1_0(h, {"descr": "<f8", "fortran_order": fortran, "shape": (rows, cols)})
        name = "hdr_%s_%d_%d.bin" % ("F" if fortran else "C", rows, cols)
        with open(os.path.join(out, name), "wb") as f:
            f.write(h.getvalue())


if __name__ == "__main__":
    main()
