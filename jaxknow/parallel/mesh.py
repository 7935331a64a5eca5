"""Device mesh construction with axes (data, fsdp, tensor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")


class MeshError(ValueError):
    """The requested mesh does not fit the devices; the message names the config fields."""


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Returns the concrete (data, fsdp, tensor) shape; at most one entry may be -1 (fill).

    Raises MeshError naming `mesh.*` fields when the shape cannot cover `num_devices` exactly.
    """
    shape = [data, fsdp, tensor]
    for name, v in zip(MESH_AXES, shape):
        if not isinstance(v, int) or v == 0 or v < -1:
            raise MeshError(f"mesh.{name}={v!r}: must be a positive integer or -1 (fill)")
    fills = [i for i, v in enumerate(shape) if v == -1]
    if len(fills) > 1:
        raise MeshError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(v for v in shape if v != -1)
    if fills:
        if num_devices % fixed:
            raise MeshError(
                f"mesh {dict(zip(MESH_AXES, shape))}: the fixed axes ({fixed} devices) do not "
                f"divide the {num_devices} available devices"
            )
        shape[fills[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise MeshError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
            f"{num_devices} are available; set mesh.data/mesh.fsdp/mesh.tensor so their "
            f"product is {num_devices} (or use -1 to fill)"
        )
    return shape[0], shape[1], shape[2]


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Returns a Mesh with axes (data, fsdp, tensor) over `devices` (default: all devices).

    Axes are of the automatic (GSPMD) kind: shardings are given explicitly at jit boundaries
    and by constraints inside the model.
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
