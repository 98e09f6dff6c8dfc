#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): small valid files of each
format, so the fuzzers start from inputs that reach deep into the parsers. Needs Python 3 and Pillow
(python3-pil) for the JPEG/PNG seeds. The seeds are committed; run this only to regenerate them.
Regression inputs (crash-*, named after the bug) live beside the seeds and are never regenerated."""
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


# --- CIFAR: 1 CIFAR-10 record, 1 CIFAR-100 record
pix = bytes((i * 7) & 0xFF for i in range(3072))
put("fuzz_cifar", "cifar10_one_record.bin", bytes([3]) + pix)
put("fuzz_cifar", "cifar100_one_record.bin", bytes([4, 42]) + pix)

# --- IDX: Fashion-MNIST images (2 images) and labels, plain and gzip, plus a concatenated gzip
def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload

img = idx(2051, [2, 28, 28], bytes((i * 3) & 0xFF for i in range(2 * 784)))
lab = idx(2049, [2], bytes([1, 9]))
put("fuzz_idx", "images.idx3", img)
put("fuzz_idx", "images.idx3.gz", gz(img))
put("fuzz_idx", "labels.idx1", lab)
put("fuzz_idx", "labels.idx1.gz", gz(lab))
put("fuzz_idx", "labels_two_members.idx1.gz", gz(lab[:5]) + gz(lab[5:]))
put("fuzz_idx", "matrix_4d.idx", idx(0x0804, [2, 1, 2, 3], bytes(range(12))))

# --- Tiny-ImageNet: text files and 64x64 images
put("fuzz_tiny_imagenet", "wnids.txt", "n01443537\nn01629819\r\n\n  n01641577 \n")
put("fuzz_tiny_imagenet", "val_annotations.txt",
    "val_0.JPEG\tn01443537\t0\t10\t62\t60\nval_1.JPEG\tn01629819\t1\t2\t3\t4\nval_2.JPEG\tn01641577\n")
try:
    from PIL import Image
except ImportError:
    sys.exit("make_corpus.py: Pillow (python3-pil) is needed for the image seeds")


def image(mode, f):
    im = Image.new(mode, (64, 64))
    im.putdata([f(x, y) for y in range(64) for x in range(64)])
    return im


def save(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


rgb = image("RGB", lambda x, y: (x * 4, y * 4, (x + y) * 2))
gray = image("L", lambda x, y: (x * y) & 0xFF)
put("fuzz_tiny_imagenet", "baseline.jpg", save(rgb, "JPEG", quality=30))
put("fuzz_tiny_imagenet", "progressive.jpg", save(rgb, "JPEG", quality=30, progressive=True))
put("fuzz_tiny_imagenet", "gray.jpg", save(gray, "JPEG", quality=30))
put("fuzz_tiny_imagenet", "subsampled_420.jpg", save(rgb, "JPEG", quality=20, subsampling=2))
put("fuzz_tiny_imagenet", "rgb.png", save(rgb, "PNG", optimize=True))
put("fuzz_tiny_imagenet", "gray.png", save(gray, "PNG", optimize=True))
put("fuzz_tiny_imagenet", "palette.png", save(rgb.quantize(16), "PNG", optimize=True))
put("fuzz_tiny_imagenet", "rgba.png", save(rgb.convert("RGBA"), "PNG", optimize=True))
put("fuzz_tiny_imagenet", "gray16.png", save(gray.convert("I;16"), "PNG"))
put("fuzz_tiny_imagenet", "gray_alpha.png", save(gray.convert("LA"), "PNG"))


# Lossless transcodes of one image by libjpeg-turbo's tools (Debian: libjpeg-turbo-progs): restart
# intervals and progressive scans over the same DCT coefficients, so stb_image must decode every one to
# the same pixels (tests/data/test_jpeg_check.cpp checks that, and that any cut in their scans is caught).
def jpeg_tool(cmd, data):
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True).stdout


if shutil.which("cjpeg") and shutil.which("jpegtran"):
    def texture(x, y):
        n = ((x * 73856093) ^ (y * 19349663)) % 41  # fixed pseudo-noise: non-zero high frequencies
        return ((x * 5 + n) & 0xFF, (y * 3 + 2 * n) & 0xFF, ((x ^ y) * 4 + n) & 0xFF)
    ppm = save(image("RGB", texture), "PPM")
    base = jpeg_tool(["cjpeg", "-quality", "75", "-sample", "2x2"], ppm)
    gray_base = jpeg_tool(["cjpeg", "-quality", "90", "-grayscale"], ppm)
    put("fuzz_tiny_imagenet", "cjpeg-420.jpg", base)
    put("fuzz_tiny_imagenet", "cjpeg-420-progressive.jpg", jpeg_tool(["jpegtran", "-progressive"], base))
    put("fuzz_tiny_imagenet", "cjpeg-420-restart1.jpg", jpeg_tool(["jpegtran", "-restart", "1"], base))
    put("fuzz_tiny_imagenet", "cjpeg-420-progressive-restart1.jpg",
        jpeg_tool(["jpegtran", "-progressive", "-restart", "1"], base))
    put("fuzz_tiny_imagenet", "cjpeg-gray.jpg", gray_base)
    put("fuzz_tiny_imagenet", "cjpeg-gray-restart3b.jpg", jpeg_tool(["jpegtran", "-restart", "3B"], gray_base))
    put("fuzz_tiny_imagenet", "cjpeg-gray-progressive-restart2b.jpg",
        jpeg_tool(["jpegtran", "-progressive", "-restart", "2B"], gray_base))
else:
    print("make_corpus.py: cjpeg/jpegtran not found (libjpeg-turbo-progs): cjpeg-*.jpg seeds left as they are",
          file=sys.stderr)


# --- safetensors: the layout engine/io/safetensors.cpp writes
def safetensors(tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


f32 = lambda vals: struct.pack("<%df" % len(vals), *vals)
put("fuzz_safetensors", "checkpoint_like.safetensors", safetensors(
    {"fc.weight": ("F32", [2, 3], f32([0.5, -1, 2, 3, 4, 5])), "fc.bias": ("F32", [2], f32([0, 1])),
     "bn.num_batches_tracked": ("I64", [], struct.pack("<q", 7)),
     "fc.weight_mask": ("U8", [2, 3], bytes([1, 0, 1, 1, 1, 0]))},
    {"format": "sparrow-checkpoint-1", "model": "resnet8", "widths": "16,16,32,64", "epoch": "1"}))
put("fuzz_safetensors", "dtypes.safetensors", safetensors(
    {"a": ("F64", [1], struct.pack("<d", 1.5)), "b": ("BF16", [2], b"\x80\x3f\x00\x40"),
     "c": ("BOOL", [3], b"\x01\x00\x01"), "d": ("I32", [0, 4], b""), "e": ("U16", [1, 1], b"\x01\x02")}))
put("fuzz_safetensors", "empty.safetensors", safetensors({}))
put("fuzz_safetensors", "metadata_only.safetensors", safetensors({}, {"k": "v", "model": "vgg11"}))

# --- options: one argument per line
opts = {
    "train_quick.txt": ["--dataset", "synthetic", "--model", "resnet8", "--epochs", "2", "--batch-size", "16",
                        "--limit-train", "64", "--limit-test", "32", "--threads", "1", "--out", "/tmp/x"],
    "preset.txt": ["--preset", "quick", "--epochs", "1", "--lr=0.05", "--schedule", "multistep:1,2"],
    "resume.txt": ["--resume", "--out", "run", "--checkpoint-every", "5", "--seed", "3", "--quiet"],
    "profile.txt": ["--profile-steps", "2:4", "--device", "cpu", "--widths", "8,8,16,32", "--nesterov"],
    "cosine.txt": ["--schedule", "cosine", "--momentum", "0.8", "--wd", "1e-4", "--classifier", "pdd",
                   "--checkpoint", "a.safetensors", "--data-dir", "/usr/share/datasets/fashion-mnist"],
}
for name, args in opts.items():
    put("fuzz_options", name, "\n".join(args))
print("make_corpus.py: wrote seeds under", root)
