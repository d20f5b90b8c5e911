"""One ModalitySpec per sensor stream, and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModalitySpec:
    """What a window of one modality looks like.

    ``family`` picks the encoder architecture (``inertial`` for 1-D time series
    such as accelerometer or gyroscope streams).
    """

    name: str
    channels: int
    rate_hz: float
    window: int = 128
    family: str = "inertial"
    unit: str = ""

    def check_window(self, shape: tuple[int, ...], where: str = "") -> None:
        """Raise ValueError unless ``shape`` is (N, window, channels)."""
        at = f" in {where}" if where else ""
        if len(shape) != 3 or shape[1] != self.window or shape[2] != self.channels:
            raise ValueError(
                f"modality {self.name!r}{at}: expected windows of shape (N, {self.window}, "
                f"{self.channels}), got {tuple(shape)}"
            )


@dataclass
class ModalityRegistry:
    """Known modalities by name; unknown names are refused with the list of known ones."""

    specs: dict[str, ModalitySpec] = field(default_factory=dict)

    def register(self, spec: ModalitySpec) -> ModalitySpec:
        old = self.specs.get(spec.name)
        if old is not None and old != spec:
            raise ValueError(f"modality {spec.name!r} already registered as {old}, not {spec}")
        self.specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ModalitySpec:
        try:
            return self.specs[name]
        except KeyError:
            known = ", ".join(sorted(self.specs)) or "none"
            raise KeyError(f"unknown modality {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def names(self) -> list[str]:
        return sorted(self.specs)


def inertial(name: str, rate_hz: float = 50.0, window: int = 128, channels: int = 3, unit: str = "") -> ModalitySpec:
    return ModalitySpec(name=name, channels=channels, rate_hz=rate_hz, window=window, unit=unit)


def default_registry(rate_hz: float = 50.0, window: int = 128) -> ModalityRegistry:
    """The phone/IMU streams edgebind knows out of the box (HAPT's and the virtual ones)."""
    reg = ModalityRegistry()
    for name, unit in (("acc", "g"), ("gyro", "rad/s"), ("gravity", "g"), ("lin_acc", "g")):
        reg.register(inertial(name, rate_hz, window, 3, unit))
    return reg
