"""ONNX in and out: serve models pruned elsewhere, and take models pruned here anywhere.

Pruning tools (``torch.nn.utils.prune``, TF-MOT, NNI, or by hand) keep their
zeros in dense weights, and their ONNX exports carry those zeros in dense
initializers: the speed pruning could buy is still on the table.
:func:`from_onnx` reads such a graph into a sparseprune model whose layers are
CSR where the weights are sparse (zeros counted exactly) and dense otherwise;
the model then predicts through its compiled plan like any other.

What is read: a single chain of fully connected layers as torch, Keras
(tf2onnx) and skl2onnx export MLPs --

* layers: ``Gemm`` (``transB``, ``alpha``, ``beta``; the activation as ``A``
  without ``transA``) or ``MatMul`` with an initializer, then ``Add`` of a
  bias;
* hidden activations ``Relu``, ``Tanh``, ``Sigmoid`` (one kind for all hidden
  layers, as in scikit-learn's MLP), or none;
* the head: ``Softmax`` or ``LogSoftmax`` (a classifier), ``Sigmoid`` on one
  output (a binary classifier), or nothing (a regressor, or logits);
* plumbing that changes no values: ``Flatten`` (axis 1), ``Reshape`` to
  ``(-1, n)``, ``Identity``, ``Dropout`` (inference), ``Cast`` to float;
* a classifier's label outputs: ``ArgMax``, then ``ArrayFeatureExtractor`` or
  ``Gather`` on a class table, ``ZipMap`` (skl2onnx), ``Sub``/``Concat`` for a
  binary head's two columns. The class labels are read from them.

Weights come from initializers (``TensorProto``, including external-data
files beside the model), sparse initializers (``SparseTensorProto``) or
``Constant`` nodes. Anything else -- a convolution, a branch, a second input,
an unknown op, a shape computed at run time -- is refused with a
``ValueError`` naming the node and its op; nothing is skipped silently.

Reading never executes code from the file: ONNX is protobuf data, and this
module reads tensors and attributes only. External data is read only from
the model's own directory.

:func:`to_onnx` writes an MLP (dense, pruned, neuron-eliminated) or a
:class:`~sparseprune.SparseLinear` as a standard graph (``Gemm`` per layer,
checked by ``onnx.checker``) that onnxruntime runs with the same results.

Tolerance: a model read here computes in the initializers' precision
(float32 for float32 graphs) and sums in a different order from onnxruntime,
so outputs agree to float rounding: within ``1e-5`` relative to the largest
output for float32 layers of a few hundred inputs (tests check ``rtol=1e-4,
atol=1e-5`` on probabilities), exactly in the predicted labels except for ties.

Needs the ``onnx`` package (``pip install 'sparseprune[onnx]'``), imported only
when these functions are called.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["from_onnx", "to_onnx", "OnnxInfo"]

#: Layers whose density (nonzeros / size) is at most this are stored as CSR and
#: left to the plan's measured choice; denser ones stay dense. Half is where a
#: float32 CSR (value + int32 index per nonzero) stops being smaller than the
#: dense array.
SPARSE_MAX_DENSITY = 0.5

#: The oldest default-domain opset whose operator semantics this reader knows.
OPSET_MIN = 7

_ACT_OPS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "logistic"}
_HEAD_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
_PASS_OPS = {"Identity", "Dropout", "Flatten", "Reshape", "Cast"}
_TAIL_ONLY_OPS = {"ArgMax", "ArrayFeatureExtractor", "Gather", "ZipMap", "Sub", "Concat"}
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def _import_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the test extra installs onnx
        raise ImportError("sparseprune's ONNX support needs the 'onnx' package: "
                          "pip install 'sparseprune[onnx]'") from None
    return onnx


@dataclass
class OnnxInfo:
    """What :func:`from_onnx` found in a graph besides the layers.

    Attributes
    ----------
    input_name : str
        The graph's data input.
    head : {"softmax", "log_softmax", "logistic", "none"}
        The output activation of the last layer as the graph computes it
        (``"none"``: raw outputs, e.g. logits or regression values).
    output_names : dict
        Graph output name for ``"scores"`` (the head's values: probabilities,
        log-probabilities or raw outputs) and, where present, ``"label"``.
    classes : ndarray or None
        Class labels read from the graph (a class table or ``ZipMap``).
    opset : int
        The default-domain opset the graph was exported with.
    producer : str
        ``producer_name`` and version from the file.
    """

    input_name: str
    head: str
    output_names: dict = field(default_factory=dict)
    classes: Any = None
    opset: int = 0
    producer: str = ""


# --------------------------------------------------------------------------- loading

def _load(src):
    """The ModelProto, a name for messages and the directory external data may come from."""
    onnx = _import_onnx()
    if isinstance(src, onnx.ModelProto):
        return src, "the ONNX model", None
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _parse(onnx, bytes(src), "the bytes given"), "the ONNX model", None
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file.")
        with open(path, "rb") as f:
            data = f.read()
        return _parse(onnx, data, path), path, os.path.dirname(os.path.abspath(path))
    raise TypeError("src must be a path, the bytes of an ONNX file or an onnx.ModelProto. "
                    f"Got {type(src).__name__}.")


def _parse(onnx, data: bytes, name: str):
    from google.protobuf.message import DecodeError

    if not data:
        raise ValueError(f"{name} is empty: not an ONNX model.")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} is not an ONNX model, or it is truncated: protobuf could not parse it "
                         f"({exc}).") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ValueError(f"{name} is not an ONNX model: it has no IR version or no graph with outputs.")
    return model


def _opset(model, name: str) -> int:
    onnx = _import_onnx()
    newest = onnx.defs.onnx_opset_version()
    version = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            version = int(imp.version)
    if version is None:
        if model.opset_import:
            raise ValueError(f"{name} imports no default-domain (ai.onnx) opset; it cannot be an MLP graph.")
        version = OPSET_MIN  # IR 2 files without opset_import use opset 1 semantics for our ops
    if version > newest:
        raise ValueError(f"{name} uses opset {version} of the default domain; the installed onnx package "
                         f"knows opsets up to {newest}. Upgrade onnx, or re-export with opset <= {newest}.")
    if version < OPSET_MIN:
        raise ValueError(f"{name} uses opset {version}; sparseprune reads opsets {OPSET_MIN}..{newest}. "
                         "Convert it with onnx.version_converter.convert_version(model, 13).")
    return version


def _tensor(t, base_dir: str | None, name: str) -> np.ndarray:
    """A TensorProto's values, with external data read from the model's directory only."""
    onnx = _import_onnx()
    from onnx import numpy_helper

    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if base_dir is None:
            raise ValueError(f"initializer {t.name!r} of {name} keeps its values in an external file "
                             f"({loc!r}); load the model from its path so the file can be found beside it.")
        root = os.path.realpath(base_dir)
        full = os.path.realpath(os.path.join(root, loc))
        if os.path.commonpath([root, full]) != root:
            raise ValueError(f"initializer {t.name!r} of {name} points outside the model's directory "
                             f"({loc!r}); refused.")
        if not os.path.isfile(full):
            raise FileNotFoundError(f"initializer {t.name!r} of {name}: its external data file {full} is missing.")
        try:
            return numpy_helper.to_array(t, root)
        except Exception as exc:  # a short file, a bad offset
            raise ValueError(f"initializer {t.name!r} of {name}: its external data in {full} cannot be read "
                             f"({exc}).") from None
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:
        raise ValueError(f"tensor {t.name!r} of {name} cannot be read ({exc}); is the file truncated?") from None


def _sparse_tensor(s, base_dir: str | None, name: str):
    """A SparseTensorProto as a csr_array (2-D) or a dense array (other ranks)."""
    values = np.asarray(_tensor(s.values, base_dir, name))
    indices = np.asarray(_tensor(s.indices, base_dir, name), dtype=np.int64)
    dims = tuple(int(d) for d in s.dims)
    tname = s.values.name
    size = int(np.prod(dims)) if dims else 1
    if indices.ndim == 1:
        if indices.shape[0] != values.shape[0] or (indices.size and (indices.min() < 0 or indices.max() >= size)):
            raise ValueError(f"sparse initializer {tname!r} of {name}: its indices do not fit its shape {dims}.")
        flat = indices
    elif indices.ndim == 2 and indices.shape == (values.shape[0], len(dims)):
        if indices.size and (indices.min() < 0 or np.any(indices.max(axis=0) >= np.asarray(dims))):
            raise ValueError(f"sparse initializer {tname!r} of {name}: its indices do not fit its shape {dims}.")
        flat = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices[:, 0]
    else:
        raise ValueError(f"sparse initializer {tname!r} of {name}: indices of shape {indices.shape} "
                         f"do not match {values.shape[0]} values of a tensor of shape {dims}.")
    if np.unique(flat).size != flat.size:
        raise ValueError(f"sparse initializer {tname!r} of {name} lists a position twice.")
    if len(dims) == 2:
        rows, cols = np.divmod(flat, dims[1])
        return sp.csr_array((values, (rows, cols)), shape=dims)
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(dims)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node, base_dir, name):
    a = _attrs(node)
    onnx = _import_onnx()
    if "value" in a:
        return _tensor(a["value"], base_dir, name)
    if "sparse_value" in a:
        return _sparse_tensor(a["sparse_value"], base_dir, name)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    if "value_string" in a or "value_strings" in a:
        v = a.get("value_string", a.get("value_strings"))
        return np.asarray([s.decode() if isinstance(s, bytes) else s for s in np.atleast_1d(v)])
    raise ValueError(f"node {node.name or node.output[0]!r} (Constant) of {name} has no value attribute "
                     f"this reader knows ({sorted(a)}); onnx {onnx.__version__}.")


# --------------------------------------------------------------------------- reading a graph

@dataclass
class _Dense:
    W: Any                 # (out, in) ndarray or csr_array
    b: np.ndarray
    act: str | None = None
    node: str = ""


def _node_label(node) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _as_float(a, what: str, node, name: str):
    """A weight or bias as a float array (float64 stays float64; other floats become float32), checked finite."""
    if sp.issparse(a):
        data = a.data
    else:
        a = np.asarray(a)
        data = a
    if data.dtype.kind not in "fiu":
        raise ValueError(f"{_node_label(node)} of {name}: {what} has dtype {data.dtype}; a layer needs numbers.")
    dtype = np.float64 if data.dtype == np.float64 else np.float32
    a = a.astype(dtype)
    if not np.isfinite(a.data if sp.issparse(a) else a).all():
        raise ValueError(f"{_node_label(node)} of {name}: {what} holds NaN or inf; "
                         "a model with non-finite weights cannot be served.")
    return a


def _bias(c, n_out: int, node, name: str, what: str) -> np.ndarray:
    c = c.toarray() if sp.issparse(c) else np.asarray(c)
    if c.size == 1:
        return np.full(n_out, c.reshape(-1)[0], dtype=c.dtype)
    if c.ndim >= 1 and c.shape[-1] == n_out and c.size == n_out:
        return c.reshape(n_out).copy()
    raise ValueError(f"{_node_label(node)} of {name}: {what} of shape {c.shape} does not broadcast to one value "
                     f"per output ({n_out}); a bias that depends on the batch row is not a layer bias.")


class _Reader:
    """Walks a graph's nodes in order, following the one running activation tensor."""

    def __init__(self, model, name: str, base_dir: str | None) -> None:
        self.model, self.name, self.base_dir = model, name, base_dir
        self.opset = _opset(model, name)
        g = model.graph
        self.consts: dict[str, Any] = {}
        for t in g.initializer:
            self.consts[t.name] = _LazyTensor(t)
        for s in g.sparse_initializer:
            self.consts[s.values.name] = _sparse_tensor(s, base_dir, name)
        data_inputs = [i for i in g.input if i.name not in self.consts]
        if len(data_inputs) != 1:
            names = [i.name for i in data_inputs]
            raise ValueError(f"{name} has {len(names)} data inputs {names}; a sparseprune model takes one "
                             "2-D input.")
        self.input = data_inputs[0]
        self.layers: list[_Dense] = []
        self.pending: _Dense | None = None
        self.n_in: int | None = None       # set by a Reshape/the first layer
        self.head = "none"
        self.tail: dict[str, str] = {}     # tensor -> kind, once the head is reached
        self.classes = None
        self.cur = self.input.name
        self.binary_complement = False

    # -- helpers -------------------------------------------------------------
    def const(self, tname: str, node):
        v = self.consts[tname]
        if isinstance(v, _LazyTensor):
            v = _tensor(v.proto, self.base_dir, self.name)
            self.consts[tname] = v
        return v

    def width(self) -> int | None:
        if self.pending is not None:
            return self.pending.W.shape[0]
        if self.layers:
            return self.layers[-1].W.shape[0]
        return self.n_in

    def finish_pending(self, act: str | None, node) -> None:
        if self.pending is None:
            raise ValueError(f"{_node_label(node)} of {self.name} is not applied to a layer's output "
                             "(Gemm/MatMul + Add); sparseprune layers are linear + activation.")
        self.pending.act = act
        self.layers.append(self.pending)
        self.pending = None

    def new_layer(self, W, b, node) -> None:
        if self.pending is not None:       # two linear layers in a row: the first has no activation
            self.finish_pending(None, node)
        n_out, n_in = W.shape
        have = self.width()
        if have is not None and have != n_in:
            raise ValueError(f"{_node_label(node)} of {self.name}: its weight takes {n_in} inputs but the "
                             f"tensor it reads has {have} columns; the shapes do not chain.")
        if not self.layers and self.n_in is None:
            self.n_in = n_in
        self.pending = _Dense(W, b, node=node.name or node.output[0])

    # -- the walk --------------------------------------------------------------
    def read(self) -> None:
        for node in self.model.graph.node:
            if node.domain not in _KNOWN_DOMAINS:
                raise ValueError(f"{_node_label(node)} of {self.name} is from domain {node.domain!r}, "
                                 "which sparseprune does not read.")
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant_value(node, self.base_dir, self.name)
                continue
            if self.tail:
                self.tail_node(node)
                continue
            ins = [i for i in node.input if i and i not in self.consts]
            if node.op_type in _TAIL_ONLY_OPS and (self.layers or self.pending is not None):
                if self.pending is not None:
                    self.finish_pending(None, node)
                self.tail = {self.cur: "scores"}
                self.tail_node(node)
                continue
            if ins != [self.cur]:
                self.refuse_inputs(node, ins)
            self.body_node(node)
        if self.pending is not None:
            self.pending.act = None
            self.layers.append(self.pending)
            self.pending = None
        if not self.layers:
            raise ValueError(f"{self.name} has no Gemm or MatMul layer; sparseprune reads fully connected networks.")
        self.check_outputs()

    def refuse_inputs(self, node, ins) -> None:
        missing = [i for i in node.input if i and i not in self.consts and i != self.cur]
        if not ins:
            raise ValueError(f"{_node_label(node)} of {self.name} computes from constants only (a shape or value "
                             "computed at run time); simplify the graph first (e.g. onnxsim, or export with "
                             "constant folding and nn.Flatten).")
        if node.op_type in ("Shape", "Size"):
            raise ValueError(f"{_node_label(node)} of {self.name} reads the shape of the activation at run time; "
                             "sparseprune needs static 2-D shapes: export with nn.Flatten()/x.flatten(1) or a "
                             "constant reshape, or simplify the graph (onnxsim).")
        raise ValueError(f"{_node_label(node)} of {self.name} reads {missing or ins}, which is not the running "
                         f"activation {self.cur!r}: branches, skip connections and second inputs are not "
                         "supported; sparseprune reads one chain of layers.")

    def body_node(self, node) -> None:
        op, a = node.op_type, _attrs(node)
        out = node.output[0]
        if op == "Gemm":
            self.gemm(node, a)
        elif op == "MatMul":
            B = self.const(node.input[1], node) if node.input[1] in self.consts else None
            if node.input[0] != self.cur or B is None or B.ndim != 2:
                raise ValueError(f"{_node_label(node)} of {self.name}: only activation @ constant 2-D weight "
                                 "is a layer; this MatMul is not.")
            W = _as_float(B, f"weight {node.input[1]!r}", node, self.name).T
            self.new_layer(sp.csr_array(W) if sp.issparse(W) else np.ascontiguousarray(W),
                           np.zeros(W.shape[0], dtype=W.dtype), node)
        elif op == "Add":
            c_name = [i for i in node.input if i != self.cur]
            if self.pending is None or len(c_name) != 1:
                raise ValueError(f"{_node_label(node)} of {self.name} is not the bias of a MatMul/Gemm layer "
                                 "(an Add elsewhere, e.g. a residual, is not supported).")
            c = _as_float(self.const(c_name[0], node), f"bias {c_name[0]!r}", node, self.name)
            self.pending.b = self.pending.b + _bias(c, self.pending.W.shape[0], node, self.name,
                                                    f"bias {c_name[0]!r}").astype(self.pending.b.dtype)
        elif op in _ACT_OPS:
            self.finish_pending(_ACT_OPS[op], node)
        elif op in _HEAD_OPS:
            axis = a.get("axis", -1 if self.opset >= 13 else 1)
            if axis not in (1, -1):
                raise ValueError(f"{_node_label(node)} of {self.name} normalises over axis {axis}; "
                                 "a classifier head normalises over the classes (axis 1).")
            self.finish_pending(_HEAD_OPS[op], node)
            self.head = _HEAD_OPS[op]
            self.tail = {out: "scores"}
        elif op in _PASS_OPS:
            self.passthrough(node, a)
        elif op == "LeakyRelu":
            raise ValueError(f"{_node_label(node)} of {self.name}: LeakyRelu is not one of sparseprune's "
                             "activations (relu, tanh, logistic, identity).")
        else:
            raise ValueError(f"{_node_label(node)} of {self.name}: op {op} is not supported; sparseprune reads "
                             "fully connected networks (Gemm/MatMul+Add, Relu/Tanh/Sigmoid, Softmax/LogSoftmax, "
                             "Flatten, Reshape, Identity, Dropout, Cast).")
        self.cur = out

    def gemm(self, node, a) -> None:
        if node.input[0] != self.cur or node.input[1] not in self.consts:
            raise ValueError(f"{_node_label(node)} of {self.name}: only Gemm(activation, constant weight) is a "
                             "layer; this one multiplies by the activation from the right.")
        if a.get("transA", 0):
            raise ValueError(f"{_node_label(node)} of {self.name} transposes the activation (transA=1); "
                             "sparseprune layers take one row per sample.")
        B = _as_float(self.const(node.input[1], node), f"weight {node.input[1]!r}", node, self.name)
        if B.ndim != 2:
            raise ValueError(f"{_node_label(node)} of {self.name}: weight {node.input[1]!r} is not 2-D.")
        W = B if a.get("transB", 0) else B.T
        alpha = float(a.get("alpha", 1.0))
        if alpha != 1.0:
            W = W * np.asarray(alpha, dtype=W.dtype)
        W = sp.csr_array(W) if sp.issparse(W) else np.ascontiguousarray(W)
        b = np.zeros(W.shape[0], dtype=W.dtype)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts:
                raise ValueError(f"{_node_label(node)} of {self.name}: its C input is not a constant bias.")
            c = _as_float(self.const(node.input[2], node), f"bias {node.input[2]!r}", node, self.name)
            b = (_bias(c, W.shape[0], node, self.name, f"bias {node.input[2]!r}")
                 * float(a.get("beta", 1.0))).astype(W.dtype)
        self.new_layer(W, b, node)

    def passthrough(self, node, a) -> None:
        op = node.op_type
        onnx = _import_onnx()
        if op == "Cast" and a.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                onnx.TensorProto.FLOAT16):
            raise ValueError(f"{_node_label(node)} of {self.name} casts the activation to a non-float type.")
        if op == "Flatten" and a.get("axis", 1) != 1:
            raise ValueError(f"{_node_label(node)} of {self.name} flattens at axis {a.get('axis')}; only "
                             "axis 1 (one row per sample) keeps the batch.")
        if op == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = self.const(node.input[2], node) if node.input[2] in self.consts else None
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise ValueError(f"{_node_label(node)} of {self.name} is in training mode; export for inference.")
        if op == "Reshape":
            shape = np.asarray(self.const(node.input[1], node)).reshape(-1).astype(np.int64)
            if shape.size != 2 or shape[0] not in (0, -1):
                raise ValueError(f"{_node_label(node)} of {self.name} reshapes to {shape.tolist()}; sparseprune "
                                 "reads reshapes to (-1, n) or (0, n) that keep one row per sample.")
            n = int(shape[1])
            have = self.width()
            if n > 0 and have is not None and n != have:
                raise ValueError(f"{_node_label(node)} of {self.name} reshapes {have} columns to {n}: "
                                 "it would mix samples.")
            if n > 0 and have is None:
                self.n_in = n

    def tail_node(self, node) -> None:
        """Nodes after the head: labels and the binary head's second column, nothing that changes scores."""
        op, a = node.op_type, _attrs(node)
        ins = [i for i in node.input if i and i not in self.consts]
        kinds = [self.tail.get(i) for i in ins]
        if not ins or None in kinds:
            raise ValueError(f"{_node_label(node)} of {self.name} comes after the output layer but does not "
                             "read its scores; sparseprune reads one chain of layers and its class labels.")
        out = node.output[0]
        if op in ("Identity", "Cast", "Reshape", "Flatten"):
            self.tail[out] = kinds[0]
        elif op == "Sub" and kinds == ["scores"] and node.input[0] in self.consts:
            one = np.asarray(self.const(node.input[0], node))
            if self.layers[-1].act != "logistic" or one.size != 1 or float(one.reshape(-1)[0]) != 1.0:
                raise ValueError(f"{_node_label(node)} of {self.name}: only 1 - p of a one-output Sigmoid head "
                                 "is read after the head.")
            self.tail[out] = "complement"
        elif op == "Concat" and kinds == ["complement", "scores"] and a.get("axis") in (1, -1):
            self.binary_complement = True
            self.tail[out] = "scores2"
        elif op == "ArgMax" and kinds[0] in ("scores", "scores2"):
            if a.get("axis", 0) not in (1, -1):
                raise ValueError(f"{_node_label(node)} of {self.name} takes the argmax over axis {a.get('axis', 0)}; "
                                 "class labels come from axis 1.")
            self.tail[out] = "index"
        elif op in ("ArrayFeatureExtractor", "Gather") and kinds == ["index"] and node.input[0] in self.consts:
            if op == "Gather" and a.get("axis", 0) != 0:
                raise ValueError(f"{_node_label(node)} of {self.name} gathers on axis {a.get('axis')}.")
            self.set_classes(np.asarray(self.const(node.input[0], node)).reshape(-1), node)
            self.tail[out] = "label"
        elif op == "ZipMap" and kinds[0] in ("scores", "scores2"):
            labels = a.get("classlabels_int64s", a.get("classlabels_strings"))
            labels = np.asarray([s.decode() if isinstance(s, bytes) else s for s in labels])
            self.set_classes(labels, node)
            self.tail[out] = "zipmap"
        elif op in _ACT_OPS or op in _HEAD_OPS or op in ("Gemm", "MatMul", "Add"):
            raise ValueError(f"{_node_label(node)} of {self.name} comes after the output activation; "
                             "sparseprune's models end in one Softmax, LogSoftmax or Sigmoid.")
        else:
            raise ValueError(f"{_node_label(node)} of {self.name}: op {op} after the output layer is not "
                             "supported (read: ArgMax, ArrayFeatureExtractor/Gather of class labels, ZipMap, "
                             "Cast, Reshape, Identity).")

    def set_classes(self, labels: np.ndarray, node) -> None:
        if labels.dtype.kind in "SO":
            labels = np.asarray([s.decode() if isinstance(s, bytes) else str(s) for s in labels])
        if self.classes is not None and not np.array_equal(np.asarray(self.classes, dtype=object),
                                                           np.asarray(labels, dtype=object)):
            raise ValueError(f"{_node_label(node)} of {self.name} names classes {labels.tolist()} but another "
                             f"node names {np.asarray(self.classes).tolist()}.")
        self.classes = labels

    def check_outputs(self) -> None:
        produced = {self.cur: "scores"} if not self.tail else self.tail
        names = {}
        for o in self.model.graph.output:
            kind = produced.get(o.name)
            if kind is None:
                raise ValueError(f"{self.name}: graph output {o.name!r} is not the network's output or its "
                                 "class labels (an intermediate output is not supported).")
            if kind in ("scores", "scores2") and "scores" not in names:
                names["scores"] = o.name
            elif kind == "label":
                names["label"] = o.name
            elif kind == "zipmap":
                names["zipmap"] = o.name
        self.output_names = names


class _LazyTensor:
    """An initializer read on first use (a graph may carry tensors no layer reads)."""

    __slots__ = ("proto",)

    def __init__(self, proto) -> None:
        self.proto = proto


# --------------------------------------------------------------------------- building a model

def _storage(W, max_density: float):
    """CSR when the weights are sparse enough for the plan to have a choice, dense otherwise (zeros counted exactly)."""
    size = W.shape[0] * W.shape[1]
    if sp.issparse(W):
        W = sp.csr_array(W)
        W.eliminate_zeros()
        nnz = W.nnz
    else:
        nnz = int(np.count_nonzero(W))
    if size and nnz / size <= max_density:
        S = sp.csr_array(W)
        S.sum_duplicates()
        S.sort_indices()
        return S
    return np.ascontiguousarray(W.toarray() if sp.issparse(W) else W)


def _read(src, max_density: float = SPARSE_MAX_DENSITY):
    """Read a graph: (layers as (W, b, act) with W CSR or dense, OnnxInfo, n_features)."""
    if not isinstance(max_density, (int, float)) or not 0 <= max_density <= 1:
        raise ValueError(f"max_density must be a number in [0, 1]. Got {max_density!r}.")
    model, name, base_dir = _load(src)
    r = _Reader(model, name, base_dir)
    r.read()
    acts = [layer.act for layer in r.layers]
    hidden = {a for a in acts[:-1]}
    if len(hidden) > 1:
        first = acts[0]
        odd = next(layer for layer in r.layers[:-1] if layer.act != first)
        raise ValueError(f"{name}: layer {odd.node!r} uses activation {odd.act or 'none'} where the first layer "
                         f"uses {first or 'none'}; sparseprune's MLPs use one activation for all hidden layers.")
    if any(a in ("softmax", "log_softmax") for a in acts[:-1]):
        raise ValueError(f"{name}: a Softmax between hidden layers is not supported.")
    last = acts[-1]
    if last in ("relu", "tanh"):
        raise ValueError(f"{name}: the last layer ({r.layers[-1].node!r}) ends in {last}; sparseprune models "
                         "end in identity, softmax or a one-output sigmoid.")
    n_out = r.layers[-1].W.shape[0]
    head = last or "none"
    if head == "logistic" and n_out != 1:
        raise ValueError(f"{name}: a Sigmoid on {n_out} outputs is a multi-label head, which sparseprune's "
                         "MLPClassifier does not support.")
    if head in ("softmax", "log_softmax") and n_out < 2:
        raise ValueError(f"{name}: a Softmax over one output is constant; not a classifier head.")
    dtype = np.float64 if any(layer.W.dtype == np.float64 for layer in r.layers) else np.float32
    layers = [(_storage(layer.W.astype(dtype), max_density), layer.b.astype(dtype),
               layer.act) for layer in r.layers]
    if len(layers) < 2:
        raise ValueError(f"{name} has one layer and no hidden layer; sparseprune's MLPs have at least one "
                         "(serve a single layer with sparseprune.SparseLinear).")
    producer = f"{model.producer_name} {model.producer_version}".strip()
    info = OnnxInfo(input_name=r.input.name, head=head, output_names=r.output_names, classes=r.classes,
                    opset=r.opset, producer=producer)
    n_features = layers[0][0].shape[1]
    _check_input_width(r, n_features, name)
    return layers, info, n_features


def _check_input_width(r: _Reader, n_features: int, name: str) -> None:
    t = r.input.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
    rest = dims[1:]
    if rest and all(d is not None for d in rest) and int(np.prod(rest)) != n_features:
        raise ValueError(f"{name}: input {r.input.name!r} has shape {dims} ({int(np.prod(rest))} features per row) "
                         f"but the first layer takes {n_features}; the shapes do not chain.")


def _hidden_activation(acts) -> str:
    hidden = [a for a in acts[:-1]]
    return (hidden[0] or "identity") if hidden else "relu"


def from_onnx(src, *, kind: str = "auto", classes=None, max_density: float = SPARSE_MAX_DENSITY):
    """Read a feed-forward ONNX graph (an MLP) into a sparseprune model.

    Layers whose weights are at most ``max_density`` nonzero become CSR (the
    model's plan then measures sparse against dense for them); the others
    stay dense. The model predicts through its compiled plan, can be pruned
    further, fine-tuned, saved and exported again with :func:`to_onnx`.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
        The ``.onnx`` file (external-data files are read from its directory),
        its bytes, or a loaded model.
    kind : {"auto", "classifier", "regressor"}, default="auto"
        ``"auto"``: a classifier when the graph ends in Softmax, LogSoftmax, a
        one-output Sigmoid or an ArgMax over its outputs, a regressor
        otherwise. ``"classifier"`` also reads raw outputs (logits, as torch
        classifiers usually export) as a classifier: softmax over them, or a
        sigmoid for one output. ``"regressor"`` refuses a classifier head.
    classes : array-like, optional
        Class labels for a classifier, in output order; by default those the
        graph names (a class table, ZipMap), else ``0 .. n_classes - 1``.
    max_density : float in [0, 1], default=0.5
        Layers at most this dense are stored as CSR.

    Returns
    -------
    MLPClassifier or MLPRegressor
        Fitted. For a LogSoftmax graph, ``predict_log_proba`` gives what the
        graph outputs; for a regressor, ``predict`` does (raw outputs, float64).

    Raises
    ------
    ValueError
        A file that is not ONNX or is truncated, an opset outside what the
        installed onnx knows, a node this reader cannot represent (named with
        its op), weights with NaN or inf, shapes that do not chain.
    FileNotFoundError
        The file, or an external-data file it refers to, is missing.
    """
    if kind not in ("auto", "classifier", "regressor"):
        raise ValueError(f"kind must be 'auto', 'classifier' or 'regressor'. Got {kind!r}.")
    return _model_from(*_read(src, max_density), kind=kind, classes=classes)


def _model_from(layers, info: OnnxInfo, n_features: int, *, kind: str = "auto", classes=None):
    """The model for what :func:`_read` found (see :func:`from_onnx`)."""
    from sparseprune.mlp import MLPClassifier, MLPRegressor

    if kind not in ("auto", "classifier", "regressor"):
        raise ValueError(f"kind must be 'auto', 'classifier' or 'regressor'. Got {kind!r}.")
    n_out = layers[-1][0].shape[0]
    head = info.head
    has_labels = info.classes is not None or "label" in info.output_names
    if kind == "auto":
        kind = "classifier" if head != "none" or has_labels else "regressor"
    if kind == "regressor":
        if head != "none":
            raise ValueError(f"the graph ends in a {head} head: it is a classifier; read it with "
                             "MLPClassifier.from_onnx (or kind='classifier').")
        return MLPRegressor._fitted_from(layers, _hidden_activation([a for _, _, a in layers]), n_features)
    out = "logistic" if n_out == 1 else "softmax"
    labels = info.classes if classes is None else np.asarray(classes)
    n_classes = 2 if n_out == 1 else n_out
    labels = np.arange(n_classes) if labels is None else np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n_classes:
        raise ValueError(f"classes must list {n_classes} labels, one per class the graph scores. "
                         f"Got shape {labels.shape}.")
    if np.unique(labels).size != labels.size:
        raise ValueError(f"classes must be distinct labels. Got {labels.tolist()}.")
    order = np.argsort(labels, kind="stable")
    if np.any(order != np.arange(labels.size)):
        # scikit-learn's convention, which fine-tuning relies on: classes_ sorted and
        # predict_proba's columns in that order. Reorder the output units to match
        # (for one sigmoid output, "class 1" becomes the other label: negate it).
        W, b, act = layers[-1]
        if n_out == 1:
            layers[-1] = (-W, -b, act)
        else:
            layers[-1] = (W[order] if not sp.issparse(W) else sp.csr_array(W[order]), b[order], act)
        labels = labels[order]
    return MLPClassifier._fitted_from(layers, _hidden_activation([a for _, _, a in layers]), n_features,
                                      out_activation=out, classes=labels)


# --------------------------------------------------------------------------- writing

def _opset_for(opset: int | None) -> int:
    onnx = _import_onnx()
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(17, newest)
    if not isinstance(opset, (int, np.integer)) or not 13 <= opset <= newest:
        raise ValueError(f"opset must be an int in 13..{newest}. Got {opset!r}.")
    return int(opset)


def _model_proto(nodes, inits, inputs, outputs, opset: int, name: str):
    onnx = _import_onnx()
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=[i for i in inits if not
                                                                         isinstance(i, onnx.SparseTensorProto)],
                              sparse_initializer=[i for i in inits if isinstance(i, onnx.SparseTensorProto)])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sparseprune",
                              ir_version=helper.find_min_ir_version_for(opsets))
    from sparseprune import __version__
    model.producer_version = __version__
    onnx.checker.check_model(model)
    return model


def _weight_init(name: str, W, sparse_initializers: bool):
    from onnx import helper, numpy_helper

    if sparse_initializers and sp.issparse(W):
        coo = sp.coo_array(W)
        flat = (coo.row.astype(np.int64) * W.shape[1] + coo.col.astype(np.int64))
        order = np.argsort(flat, kind="stable")
        values = numpy_helper.from_array(np.ascontiguousarray(coo.data[order]), name)
        indices = numpy_helper.from_array(flat[order], name + "_indices")
        return helper.make_sparse_tensor(values, indices, list(W.shape))
    dense = W.toarray() if sp.issparse(W) else np.asarray(W)
    return numpy_helper.from_array(np.ascontiguousarray(dense), name)


_ONNX_ACT = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid"}


def _layer_nodes(i: int, x: str, W, b, act: str | None, sparse_initializers: bool):
    from onnx import helper, numpy_helper

    w_name, b_name, z = f"layer{i}.weight", f"layer{i}.bias", f"layer{i}.linear"
    inits = [_weight_init(w_name, W, sparse_initializers), numpy_helper.from_array(np.asarray(b), b_name)]
    nodes = [helper.make_node("Gemm", [x, w_name, b_name], [z], name=f"layer{i}.gemm", transB=1)]
    if act in _ONNX_ACT:
        nodes.append(helper.make_node(_ONNX_ACT[act], [z], [f"layer{i}.{act}"], name=f"layer{i}.{act}"))
        z = f"layer{i}.{act}"
    return nodes, inits, z


def _elem_type(dtype):
    onnx = _import_onnx()
    return onnx.TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else onnx.TensorProto.FLOAT


def to_onnx(model, path=None, *, opset: int | None = None, sparse_initializers: bool = False):
    """Export a fitted sparseprune MLP or a :class:`~sparseprune.SparseLinear` as an ONNX graph.

    One ``Gemm`` (``transB=1``) per layer with its bias, the hidden activation,
    and the head: a classifier outputs ``probabilities`` (``Softmax``, or
    ``Sigmoid`` then ``[1 - p, p]`` for two classes, as ``predict_proba``)
    and ``label`` (``ArgMax`` then ``Gather`` from the class table, as
    ``predict``); a regressor outputs ``predictions`` of shape (n, n_outputs);
    a SparseLinear outputs ``Y``. The input is ``X``: (batch, n_features) of
    the model's float type. The graph passes ``onnx.checker``.

    Parameters
    ----------
    model : MLPClassifier, MLPRegressor or SparseLinear
    path : str or os.PathLike, optional
        Also write the model there.
    opset : int, optional
        Default-domain opset, 13 .. the installed onnx's newest (default 17).
    sparse_initializers : bool, default=False
        Store CSR layers as ONNX sparse initializers (file size grows with
        the nonzeros). Off by default: dense initializers are what every
        runtime reads; onnxruntime reads both.

    Returns
    -------
    onnx.ModelProto
    """
    from onnx import TensorProto, helper, numpy_helper

    from sparseprune.inference.spmm import SparseLinear

    op = _opset_for(opset)
    if isinstance(model, SparseLinear):
        dtype = model.dtype
        nodes, inits, z = _layer_nodes(0, "X", model.weight, model.bias, model.activation, sparse_initializers)
        nodes.append(helper.make_node("Identity", [z], ["Y"], name="output"))
        inputs = [helper.make_tensor_value_info("X", _elem_type(dtype), [None, model.shape[1]])]
        outputs = [helper.make_tensor_value_info("Y", _elem_type(dtype), [None, model.shape[0]])]
        proto = _model_proto(nodes, inits, inputs, outputs, op, "sparseprune.SparseLinear")
    else:
        from sklearn.utils.validation import check_is_fitted

        from sparseprune.mlp.estimators import _BaseMLP

        if not isinstance(model, _BaseMLP):
            raise TypeError(f"model must be a sparseprune MLPClassifier, MLPRegressor or SparseLinear. "
                            f"Got {type(model).__name__}.")
        check_is_fitted(model)
        layers = list(model.layers_)
        dtype = layers[0].bias.dtype
        hidden = None if model.activation == "identity" else model.activation
        nodes, inits, x = [], [], "X"
        for i, layer in enumerate(layers):
            act = hidden if i < len(layers) - 1 else None
            n, t, x = _layer_nodes(i, x, layer.weight, layer.bias, act, sparse_initializers)
            nodes += n
            inits += t
        n_out = layers[-1].shape[0]
        inputs = [helper.make_tensor_value_info("X", _elem_type(dtype), [None, model.n_features_in_])]
        if model._loss == "log_loss":
            if model.out_activation_ == "logistic":
                inits.append(numpy_helper.from_array(np.ones((), dtype=dtype), "one"))
                nodes += [helper.make_node("Sigmoid", [x], ["p1"], name="head.sigmoid"),
                          helper.make_node("Sub", ["one", "p1"], ["p0"], name="head.complement"),
                          helper.make_node("Concat", ["p0", "p1"], ["probabilities"], name="head.concat", axis=1)]
                n_cls = 2
            else:
                nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="head.softmax", axis=1))
                n_cls = n_out
            classes = np.asarray(model.classes_)
            if classes.dtype.kind in "iub":
                table, label_type = numpy_helper.from_array(classes.astype(np.int64), "classes"), TensorProto.INT64
            elif classes.dtype.kind == "f":
                table = numpy_helper.from_array(classes.astype(dtype), "classes")
                label_type = _elem_type(dtype)
            else:
                strings = [str(c).encode() for c in classes]
                table = helper.make_tensor("classes", TensorProto.STRING, [len(strings)], strings)
                label_type = TensorProto.STRING
            inits.append(table)
            nodes += [helper.make_node("ArgMax", ["probabilities"], ["index"], name="label.argmax", axis=1,
                                       keepdims=0),
                      helper.make_node("Gather", ["classes", "index"], ["label"], name="label.gather", axis=0)]
            outputs = [helper.make_tensor_value_info("label", label_type, [None]),
                       helper.make_tensor_value_info("probabilities", _elem_type(dtype), [None, n_cls])]
        else:
            nodes.append(helper.make_node("Identity", [x], ["predictions"], name="output"))
            outputs = [helper.make_tensor_value_info("predictions", _elem_type(dtype), [None, n_out])]
        proto = _model_proto(nodes, inits, inputs, outputs, op, f"sparseprune.{type(model).__name__}")
    if path is not None:
        with open(os.fspath(path), "wb") as f:
            f.write(proto.SerializeToString())
    return proto
