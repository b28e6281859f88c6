#!/usr/bin/env python3
"""make_png_folder.py IDX_IMAGES OUT_DIR N: writes N 28x28 grayscale PNG files into OUT_DIR
(cycling through the images of an IDX file, plain or .gz), for the scoring benchmark.
Standard library only."""
import gzip, os, struct, sys, zlib


def png(pixels):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + pixels[r * 28:(r + 1) * 28] for r in range(28))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def main():
    src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = open(src, "rb").read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    count = struct.unpack(">I", data[4:8])[0]
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        k = i % count
        with open(os.path.join(out, "img%07d.png" % i), "wb") as f:
            f.write(png(data[16 + k * 784:16 + (k + 1) * 784]))


if __name__ == "__main__":
    main()
