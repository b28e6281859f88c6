"""The network of a metaclf layer list in PyTorch, with metaclf's (PyTorch's) parameter names, so
that a metaclf checkpoint loads with `load_state_dict` and a PyTorch reference runs the very
same architecture. The layer list is the JSON `metaclf bench` hands the reference scripts:
{"input": [C, H, W], "classes": K, "layers": [{"kind": ..., "name": ..., ...}, ...]}.

    from torch_net import build, paper_arch
    net = build(json.load(open("arch.json")))
    net.load_state_dict(safetensors.torch.load_file("run/model.safetensors"))
"""
import torch
import torch.nn.functional as F

from paper_arch import paper_arch  # noqa: F401  (re-exported)


class Block(torch.nn.Module):
    """metaclf's residual block: ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, cin, out, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(out)
        self.conv2 = torch.nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(out)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(cin, out, 1, stride, 0, bias=False), torch.nn.BatchNorm2d(out)
            )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class Crop(torch.nn.Module):
    """Centre crop (metaclf's crop layer in evaluation mode; training crops at random)."""

    def __init__(self, h, w):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x):
        oy, ox = (x.shape[2] - self.h) // 2, (x.shape[3] - self.w) // 2
        if self.training:
            oy = int(torch.randint(0, x.shape[2] - self.h + 1, ()))
            ox = int(torch.randint(0, x.shape[3] - self.w + 1, ()))
        return x[:, :, oy : oy + self.h, ox : ox + self.w]


class Add(torch.nn.Module):
    """metaclf's add: body(x) + shortcut(x), each a list of layers (held by reference: the
    layers are registered under their own dotted names on the net)."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        b = x
        for m in self.body:
            b = m(b)
        s = x
        for m in self.shortcut:
            s = m(s)
        return b + s


class Normalize(torch.nn.Module):
    """(x − mean) / std per channel ([data] normalize, the net's first layer)."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        shape = (1, len(self.mean), 1, 1)
        return (x - x.new_tensor(self.mean).view(shape)) / x.new_tensor(self.std).view(shape)


def _register(root, name, m):
    """Registers `m` under a dotted name (`block1.conv1`), making containers on the way, so
    that state_dict keys are metaclf's."""
    parts = name.split(".")
    parent = root
    for p in parts[:-1]:
        if p not in parent._modules:
            parent.add_module(p, torch.nn.Module())
        parent = parent._modules[p]
    if parts[-1] in parent._modules:
        # a container of that name exists (a layer named like a block's prefix): nest under it
        parent._modules[parts[-1]].add_module("_" + str(len(parent._modules[parts[-1]]._modules)), m)
    else:
        parent.add_module(parts[-1], m)


def _layers(root, layers, c, h, w, classes):
    """The modules of a layer list on a C×H×W input, registered on `root`; their output shape."""
    order = []
    for l in layers:
        k, name = l["kind"], l["name"]
        if k == "conv":
            m = torch.nn.Conv2d(c, l["out"], l["kernel"], l["stride"], l["padding"], bias=l["bias"])
            c = l["out"]
            h = (h + 2 * l["padding"] - l["kernel"]) // l["stride"] + 1
            w = (w + 2 * l["padding"] - l["kernel"]) // l["stride"] + 1
        elif k == "batchnorm":
            cls = torch.nn.BatchNorm2d if h * w > 1 else torch.nn.BatchNorm1d
            m = cls(c, eps=l["eps"], momentum=l["momentum"])
        elif k in ("relu", "leaky_relu"):
            m = torch.nn.LeakyReLU(l["slope"]) if l["slope"] > 0 else torch.nn.ReLU()
        elif k in ("maxpool", "avgpool"):
            cls = torch.nn.MaxPool2d if k == "maxpool" else torch.nn.AvgPool2d
            m = cls(l["kernel"], l["stride"])
            h, w = (h - l["kernel"]) // l["stride"] + 1, (w - l["kernel"]) // l["stride"] + 1
        elif k == "global_avgpool":
            m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            h = w = 1
        elif k == "flatten":
            m = torch.nn.Flatten()
            c, h, w = c * h * w, 1, 1
        elif k == "dropout":
            m = torch.nn.Dropout(l["rate"])
        elif k == "linear":
            out = l["out"] or classes
            m = torch.nn.Linear(c * h * w, out, bias=l["bias"])
            c, h, w = out, 1, 1
        elif k == "residual":
            m = Block(c, l["out"], l["stride"])
            c = l["out"]
            h, w = (h + 2 - 3) // l["stride"] + 1, (w + 2 - 3) // l["stride"] + 1
        elif k == "add":
            body, bd = _layers(root, l["body"], c, h, w, classes)
            short, _ = _layers(root, l["shortcut"], c, h, w, classes)
            m = Add(body, short)
            c, h, w = bd
            order.append(m)
            continue
        elif k == "normalize":
            m = Normalize(l["mean"], l["std"])
            order.append(m)
            continue
        elif k == "crop":
            m = Crop(*l["size"])
            h, w = l["size"]
        else:
            raise ValueError(f"layer kind {k}")
        _register(root, name, m)
        order.append(m)
    return order, (c, h, w)


class Net(torch.nn.Module):
    def __init__(self, arch):
        super().__init__()
        c, h, w = arch["input"]
        # a plain list: the modules are registered by name in _layers
        self.__dict__["order"], _ = _layers(self, arch["layers"], c, h, w, arch["classes"])

    def forward(self, x):
        for m in self.order:
            x = m(x)
        return x


def build(arch):
    return Net(arch)
