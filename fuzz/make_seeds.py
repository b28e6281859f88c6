#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into fuzz/seeds/<target>/ (committed; rerun to remake them).

Only the standard library: IDX files plain and gzip, a safetensors model of the default
architecture, a features CSV, PNG (gray, RGBA, 16-bit) and JPEG-less image folders, and the
shipped configs."""
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


if __name__ == "__main__":
    main()
