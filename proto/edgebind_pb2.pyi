from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SensorFrame(_message.Message):
    __slots__ = ("node_id", "sensor_id", "modality", "seq", "timestamp_ns", "rate_hz", "channels", "samples", "boot_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    sensor_id: str
    modality: str
    seq: int
    timestamp_ns: int
    rate_hz: float
    channels: int
    samples: _containers.RepeatedScalarFieldContainer[float]
    boot_id: int
    def __init__(self, node_id: _Optional[str] = ..., sensor_id: _Optional[str] = ..., modality: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., rate_hz: _Optional[float] = ..., channels: _Optional[int] = ..., samples: _Optional[_Iterable[float]] = ..., boot_id: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "scale")
    class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DTYPE_UNSPECIFIED: _ClassVar[Tensor.DType]
        FLOAT32: _ClassVar[Tensor.DType]
        FLOAT16: _ClassVar[Tensor.DType]
        INT8: _ClassVar[Tensor.DType]
    DTYPE_UNSPECIFIED: Tensor.DType
    FLOAT32: Tensor.DType
    FLOAT16: Tensor.DType
    INT8: Tensor.DType
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: Tensor.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[Tensor.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbeddingBatch(_message.Message):
    __slots__ = ("node_id", "campaign_id", "batch_id", "modality", "window_ids", "timestamps_ns", "labels", "subjects", "embeddings", "encoder_version", "group")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    campaign_id: str
    batch_id: str
    modality: str
    window_ids: _containers.RepeatedScalarFieldContainer[str]
    timestamps_ns: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    subjects: _containers.RepeatedScalarFieldContainer[int]
    embeddings: Tensor
    encoder_version: str
    group: str
    def __init__(self, node_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., modality: _Optional[str] = ..., window_ids: _Optional[_Iterable[str]] = ..., timestamps_ns: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., subjects: _Optional[_Iterable[int]] = ..., embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., encoder_version: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class AdapterBundle(_message.Message):
    __slots__ = ("modality", "version", "campaign_id", "encoder_version", "tensors", "created_ns", "key_id", "signature", "prototype", "head_tensors", "head_classes", "expires_ns", "rotations")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_TENSORS_FIELD_NUMBER: _ClassVar[int]
    HEAD_CLASSES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_NS_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    modality: str
    version: int
    campaign_id: str
    encoder_version: str
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    created_ns: int
    key_id: str
    signature: bytes
    prototype: _containers.RepeatedCompositeFieldContainer[Tensor]
    head_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    head_classes: _containers.RepeatedScalarFieldContainer[str]
    expires_ns: int
    rotations: _containers.RepeatedCompositeFieldContainer[KeyRotation]
    def __init__(self, modality: _Optional[str] = ..., version: _Optional[int] = ..., campaign_id: _Optional[str] = ..., encoder_version: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., created_ns: _Optional[int] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., prototype: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., head_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., head_classes: _Optional[_Iterable[str]] = ..., expires_ns: _Optional[int] = ..., rotations: _Optional[_Iterable[_Union[KeyRotation, _Mapping]]] = ...) -> None: ...

class KeyRotation(_message.Message):
    __slots__ = ("old_key_id", "new_key_id", "new_public_key", "issued_ns", "signature")
    OLD_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ISSUED_NS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    old_key_id: str
    new_key_id: str
    new_public_key: bytes
    issued_ns: int
    signature: bytes
    def __init__(self, old_key_id: _Optional[str] = ..., new_key_id: _Optional[str] = ..., new_public_key: _Optional[bytes] = ..., issued_ns: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ModalityInfo(_message.Message):
    __slots__ = ("name", "channels", "rate_hz", "window", "n_windows", "n_labelled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    N_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    N_LABELLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    channels: int
    rate_hz: float
    window: int
    n_windows: int
    n_labelled: int
    def __init__(self, name: _Optional[str] = ..., channels: _Optional[int] = ..., rate_hz: _Optional[float] = ..., window: _Optional[int] = ..., n_windows: _Optional[int] = ..., n_labelled: _Optional[int] = ...) -> None: ...

class NodePartInfo(_message.Message):
    __slots__ = ("group", "role", "n_windows", "n_labelled")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    N_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    N_LABELLED_FIELD_NUMBER: _ClassVar[int]
    group: str
    role: str
    n_windows: int
    n_labelled: int
    def __init__(self, group: _Optional[str] = ..., role: _Optional[str] = ..., n_windows: _Optional[int] = ..., n_labelled: _Optional[int] = ...) -> None: ...

class NodeManifest(_message.Message):
    __slots__ = ("node_id", "modalities", "hardware", "agent_version", "group", "role", "classes", "parts")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityInfo]
    hardware: str
    agent_version: str
    group: str
    role: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    parts: _containers.RepeatedCompositeFieldContainer[NodePartInfo]
    def __init__(self, node_id: _Optional[str] = ..., modalities: _Optional[_Iterable[_Union[ModalityInfo, _Mapping]]] = ..., hardware: _Optional[str] = ..., agent_version: _Optional[str] = ..., group: _Optional[str] = ..., role: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., parts: _Optional[_Iterable[_Union[NodePartInfo, _Mapping]]] = ...) -> None: ...

class LatestAdaptersRequest(_message.Message):
    __slots__ = ("node_id", "modalities", "known_versions")
    class KnownVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    known_versions: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., known_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LatestAdaptersReply(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[AdapterBundle]
    def __init__(self, bundles: _Optional[_Iterable[_Union[AdapterBundle, _Mapping]]] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class NodeStatusReply(_message.Message):
    __slots__ = ("node_id", "last_seen_ns", "adapter_versions", "windows_uploaded", "state")
    class AdapterVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    last_seen_ns: int
    adapter_versions: _containers.ScalarMap[str, int]
    windows_uploaded: int
    state: str
    def __init__(self, node_id: _Optional[str] = ..., last_seen_ns: _Optional[int] = ..., adapter_versions: _Optional[_Mapping[str, int]] = ..., windows_uploaded: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
