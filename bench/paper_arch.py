"""The paper's CNN as a metaclf layer list (its legacy [model] keys), for the reference scripts."""


def paper_arch(shape, classes=10):
    """The paper's CNN as a layer list (metaclf's legacy [model] keys)."""
    layers = []
    for i, (pool, drop) in enumerate([(True, True), (True, False), (False, True)], 1):
        layers.append({"kind": "conv", "name": f"conv{i}", "out": 16, "kernel": 3, "stride": 1, "padding": 1, "bias": True})
        layers.append({"kind": "leaky_relu", "name": f"act{i}", "slope": 0.01})
        if pool:
            layers.append({"kind": "maxpool", "name": f"pool{i}", "kernel": 2, "stride": 2})
        if drop:
            layers.append({"kind": "dropout", "name": f"drop{i}", "rate": 0.25})
    layers.append({"kind": "flatten", "name": "flatten"})
    layers.append({"kind": "linear", "name": "fc", "out": 0, "bias": True})
    return {"input": list(shape), "classes": classes, "layers": layers}
