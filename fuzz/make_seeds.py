#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into fuzz/seeds/<target>/ (committed; rerun to remake them).

Only the standard library: IDX files plain and gzip (3 and 4 dimensions), a safetensors model
of the default architecture, a features CSV, PNG (gray, RGBA, 16-bit) and TIFF-stack image
folders, NumPy arrays, the shipped configs, and the ONNX models of tests/fixtures/onnx/."""
import gzip, json, os, random, shutil, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
rng = random.Random(7)


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def idx_images(n):
    return struct.pack(">IIII", 0x803, n, 28, 28) + bytes(rng.randrange(256) for _ in range(n * 784))


def idx_labels(n):
    return struct.pack(">II", 0x801, n) + bytes(rng.randrange(10) for _ in range(n))


def png(w, h, color_type, bit_depth, pixels):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + pixels[y] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def idx4_images(n, h, w, c):
    return struct.pack(">IIIII", 0x804, n, h, w, c) + bytes(rng.randrange(256) for _ in range(n * h * w * c))


def npy(descr, shape, payload):
    """A NumPy .npy file (format 1.0) by hand."""
    head = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d, " % s for s in shape) if len(shape) == 1 else ", ".join(str(s) for s in shape))
    pad = 64 - (10 + len(head) + 1) % 64
    head = head + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + payload


def tiff_stack(w, h, pages):
    """An uncompressed little-endian TIFF, one 8-bit gray page per entry of `pages`."""
    out = bytearray(b"II*\0" + struct.pack("<I", 0))
    ifd_ptr_at = 4
    for px in pages:
        data_at = len(out)
        out += px
        if len(out) % 2:
            out += b"\0"
        ifd_at = len(out)
        struct.pack_into("<I", out, ifd_ptr_at, ifd_at)
        tags = [(256, 3, w), (257, 3, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_at), (277, 3, 1), (278, 3, h), (279, 4, len(px))]
        out += struct.pack("<H", len(tags))
        for tag, typ, val in tags:
            if typ == 3:
                out += struct.pack("<HHIHH", tag, typ, 1, val, 0)
            else:
                out += struct.pack("<HHII", tag, typ, 1, val)
        ifd_ptr_at = len(out)
        out += struct.pack("<I", 0)
    return bytes(out)


def safetensors(tensors):
    header, data = {}, b""
    for name, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        buf = struct.pack("<%df" % n, *(rng.uniform(-0.3, 0.3) for _ in range(n)))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(buf)]}
        data += buf
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    # idx: first byte even = images reader, odd = labels reader
    put("idx", "images", b"\0" + idx_images(2))
    put("idx", "images.gz", b"\0" + gzip.compress(idx_images(1), mtime=0))
    put("idx", "labels", b"\1" + idx_labels(5))
    put("idx", "labels.gz", b"\1" + gzip.compress(idx_labels(5), mtime=0))
    put("idx", "images4", b"\0" + idx4_images(2, 6, 5, 3))
    # config
    cfg_dir = os.path.join(HERE, "..", "configs")
    for f in sorted(os.listdir(cfg_dir)):
        with open(os.path.join(cfg_dir, f), "rb") as fh:
            put("config", f, fh.read())
    put("config", "small.toml", b'[run]\nname = "x"\nseed = 1\n[data]\nclasses = [1, 7]\n[train]\nlr = 0.1\n')
    # safetensors: the default architecture (conv 16,16,16, 3x3, pools after conv1/conv2)
    layers = [("conv1", [16, 1, 3, 3]), ("conv2", [16, 16, 3, 3]), ("conv3", [16, 16, 3, 3]), ("fc", [10, 784])]
    ts = []
    for name, shape in layers:
        ts.append((name + ".weight", shape))
        ts.append((name + ".bias", [shape[0]]))
    put("safetensors", "model.safetensors", safetensors(ts))
    put("safetensors", "partial.safetensors", safetensors(ts[:2]))
    # features.csv
    cols = ["msp", "entropy", "grad_all_l2"]
    rows = ["set,index,label,pred,correct,source_label," + ",".join(cols)]
    rows += ["id-test,0,3,3,1,,0.99,0.01,1e-5", "id-test,1,2,7,0,,0.6,0.9,0.2",
             "ood-fashion-mnist,4,,1,,9,0.5,1.1,3.5", "ood-uniform-noise,0,,8,,,0.4,1.5,40"]
    put("features_csv", "features.csv", ("\n".join(rows) + "\n").encode())
    put("features_csv", "old.csv", b"set,index,label,pred,correct,msp\nid-test,0,1,1,1,0.9\nood-letters,3,2,2,1,0.7\n")
    # image folder: files separated by |||
    gray = png(28, 28, 0, 8, [bytes(rng.randrange(256) for _ in range(28)) for _ in range(28)])
    rgba = png(9, 5, 6, 8, [bytes(rng.randrange(256) for _ in range(36)) for _ in range(5)])
    g16 = png(4, 3, 0, 16, [bytes(rng.randrange(256) for _ in range(8)) for _ in range(3)])
    put("image_folder", "gray", gray)
    put("image_folder", "three", gray + b"|||" + rgba + b"|||" + g16)
    stack = tiff_stack(13, 9, [bytes(rng.randrange(256) for _ in range(117)) for _ in range(2)])
    put("image_folder", "stack", gray + b"|||" + g16 + b"|||" + stack)
    # npy: images (N, H, W) uint8, (N, H, W, C) float32, labels int64
    put("npy", "u8.npy", npy("|u1", (2, 4, 3), bytes(rng.randrange(256) for _ in range(24))))
    put("npy", "f32.npy", npy("<f4", (1, 3, 2, 2), struct.pack("<12f", *(rng.random() for _ in range(12)))))
    put("npy", "labels.npy", npy("<i8", (3,), struct.pack("<3q", 1, 0, 9)))
    # onnx: the committed models of the import's fixtures (tests/fixtures/onnx/)
    fx = os.path.join(HERE, "..", "tests", "fixtures", "onnx")
    for f in ("small_resnet.onnx", "small_resnet_ts.onnx", "small_resnet_bn.onnx"):
        with open(os.path.join(fx, f), "rb") as src:
            put("onnx", f, src.read())


if __name__ == "__main__":
    main()
