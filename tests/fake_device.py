"""A host-emulated "device" backend that checks the GPU code path without a GPU.

``DeviceArray`` is a numpy array that refuses, like a CuPy array, to be mixed with host (numpy)
arrays in arithmetic and numpy functions; ``XP`` is the matching array module (numpy's functions
on device arrays; ``asarray``/``array`` are the host-to-device copies) and ``kernels`` the kernel
module: relprop's CPU kernels behind a check that every array argument lives on the device.
Registered with ``relprop.core.backend.register``, it makes ``rp.attribute`` take exactly the branch a
CuPy array takes (device caches, scratch buffers, target/baseline transfers, out-of-memory
splitting), so a host array leaking into a device pipeline fails here in CI, not on an H100.
"""
from __future__ import annotations

import types

import numpy as np


class DeviceArray(np.ndarray):
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        _check_leaves(inputs + (out or ()), f"np.{ufunc.__name__}")
        args = [_host_view(a) for a in inputs]
        if out:
            kw["out"] = tuple(_host_view(o) for o in out)
        return _wrap(getattr(ufunc, method)(*args, **kw))

    def __array_function__(self, func, types_, args, kwargs):
        _check_leaves((args, kwargs), f"np.{func.__name__}")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def get(self):
        """Device -> host copy (CuPy's ``ndarray.get``)."""
        return np.array(self.view(np.ndarray))


class FakeOOM(MemoryError):
    """Stands in for ``cupy.cuda.memory.OutOfMemoryError``."""


def _host_view(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _leaves(v):
    if isinstance(v, (list, tuple)):
        for e in v:
            yield from _leaves(e)
    elif isinstance(v, dict):
        for e in v.values():
            yield from _leaves(e)
    else:
        yield v


def _check_leaves(v, where):
    for a in _leaves(v):
        if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim > 0:
            raise TypeError(f"host array of shape {a.shape} mixed with device arrays in {where}")


def _unwrap(v):
    if isinstance(v, DeviceArray):
        return v.view(np.ndarray)
    if isinstance(v, list):
        return [_unwrap(e) for e in v]
    if isinstance(v, tuple):
        return tuple(_unwrap(e) for e in v)
    if isinstance(v, dict):
        return {k: _unwrap(e) for k, e in v.items()}
    return v


def _wrap(r):
    if isinstance(r, np.ndarray) and not isinstance(r, DeviceArray):
        return r.view(DeviceArray)
    if isinstance(r, tuple):
        return tuple(_wrap(e) for e in r)
    if isinstance(r, list):
        return [_wrap(e) for e in r]
    return r


class _XP:
    """The device array module. ``limit``: allocations above this many bytes raise FakeOOM."""

    __name__ = "fake_device_xp"
    TRANSFERS = ("asarray", "array")
    CREATORS = ("empty", "zeros", "ones", "full", "arange", "empty_like", "zeros_like")

    def __init__(self):
        self.limit = None

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def call(*args, **kw):
            if name not in self.TRANSFERS:
                _check_leaves((args, kw), f"xp.{name}")
            r = f(*_unwrap(args), **_unwrap(kw))
            if name in self.CREATORS and self.limit is not None and isinstance(r, np.ndarray) and r.nbytes > self.limit:
                raise FakeOOM(f"out of memory allocating {r.nbytes} bytes (limit {self.limit})")
            return _wrap(r)

        return call


XP = _XP()


def _kernel_module():
    from relprop.kernels import cpu

    mod = types.SimpleNamespace(xp=XP, name="fake_device", OOM=(FakeOOM,), tf32=[False], freed=[0])
    for name in cpu.__all__:
        if name in ("xp", "name", "OOM"):
            continue
        f = getattr(cpu, name)
        if not callable(f):  # constants (PARAM_ACT_CODES, the SHIFTED / WINOGRAD flags) as they are
            setattr(mod, name, f)
            continue

        def wrapped(*args, _f=f, _name=name):
            for a in args:
                if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
                    raise TypeError(f"kernel {_name} got a host array of shape {a.shape}")
            return _f(*(_host_view(a) for a in args))

        setattr(mod, name, wrapped)
    mod.conv_out_shape = cpu.conv_out_shape  # plain ints
    mod.matmul = lambda a, b, out=None: XP.matmul(a, b, out=out)  # the device's matmul (cupy's on a GPU)

    def set_tf32(on):
        prev = mod.tf32[0]
        mod.tf32[0] = bool(on)
        return prev

    def free_memory():
        mod.freed[0] += 1

    mod.set_tf32, mod.free_memory = set_tf32, free_memory
    return mod


kernels = _kernel_module()


def is_device(x):
    return isinstance(x, DeviceArray)


def to_device(x):
    return np.array(x).view(DeviceArray)


def install():
    import relprop.core.backend as B

    B.register(is_device, lambda: kernels)


def uninstall():
    import relprop.core.backend as B

    B.unregister(is_device)


def attribute_on_device(net, x, method, **params):
    """``rp.attribute`` on the emulated device: ``x`` moved there, the result checked to come back
    as a device array, returned as a host view."""
    import relprop as rp

    install()
    try:
        dev = rp.attribute(net, to_device(x), method, **params)
    finally:
        uninstall()
    assert isinstance(dev, DeviceArray)
    return dev.view(np.ndarray)
