"""The forward of one module, rewritten so that its Conv -> BatchNorm -> (+ residual and/or
ReLU) chains and BatchNorm -> ReLU (-> Conv) chains each run as one fastcnn op, and its
torch.cat of submodule outputs writes each output into its slice.

The module's own forward is traced with torch.fx, its submodules left as calls (a shallow
trace: each module's forward is rewritten in terms of its direct calls, so that the
submodules keep their own forwards and a later change to one of them is seen). A chain is
a run of calls in which each value has no other user: exactly what the fused op computes.
The new forward is installed by giving the module a subclass of its own class (restored by
fastcnn.restore); its state_dict, parameters and hooks are untouched.

fx records the forward for one value of `self.training`, so the module is traced in both
modes and each mode runs its own rewritten forward. A module that fx cannot trace
(control flow on tensor values, say) keeps its forward, and the reason is reported.
"""

import functools
import inspect
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from fastcnn.convert import fused
from fastcnn.functional._into import has_forward_hooks
from fastcnn.functional.conv_bn_act import _fused_batch_norm

# Conv -> BatchNorm with nothing after it that fuses (no ReLU, no residual add): the fused
# op would run the same two passes, with more Python around them.
NO_PASS_SAVED = "Conv -> BatchNorm without a ReLU or residual add after it saves no pass"
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class Ref:
    """A submodule of the rewritten module, by its path: a get_attr in the new graph."""

    def __init__(self, path):
        self.path = path

    def __eq__(self, other):
        return isinstance(other, Ref) and other.path == self.path

    def __hash__(self):
        return hash(self.path)


def _materialize(graph, arg):
    if isinstance(arg, Ref):
        return graph.get_attr(arg.path)
    if isinstance(arg, tuple):
        return tuple(_materialize(graph, a) for a in arg)
    return arg


class _Shallow(fx.Tracer):
    """Traces one module's forward; every submodule is a call."""

    def __init__(self, root):
        super().__init__()
        self._root = root
        # buffers as graph values: tracing must not run a forward's in-place updates of
        # them (a BatchNorm-like forward's num_batches_tracked.add_(1))
        self.proxy_buffer_attributes = True

    def is_leaf_module(self, module, qualified_name):
        return module is not self._root


class Rewriter:
    """Rewrites one module; `swaps` collects (source, target) pairs for the report, and
    `left` (submodule path, class, reason) triples."""

    def __init__(self, module):
        self.module = module
        self.swaps, self.left = [], []

    def _leave(self, path, reason):
        entry = (path, type(self.module.get_submodule(path)).__name__, reason)
        if entry not in self.left:
            self.left.append(entry)

    def _call(self, node, kind):
        """The submodule node calls when it is a call of a `kind` module with one tensor
        argument, else None."""
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None
        m = self.module.get_submodule(node.target)
        if kind == "conv":
            ok = isinstance(m, torch.nn.Conv2d) and type(m).forward is torch.nn.Conv2d.forward
        elif kind == "bn_act":
            ok = fused.is_batch_norm_act(m)
        else:
            ok = _fused_batch_norm(m)
            if (not ok and not fused.is_batch_norm_act(m)
                    and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
                self._leave(node.target, "not fused: only BatchNorm2d's own forward is")
        if ok and has_forward_hooks(m):
            self._leave(node.target, "has forward hooks, which a fused op would skip")
            return None
        return m if ok else None

    def _act(self, node, x):
        """The ReLU node applies to x: a Ref to its ReLU module, "relu" for a function or
        method, or None when node is no ReLU of x."""
        if node.op == "call_module" and node.args == (x,) and not node.kwargs:
            m = self.module.get_submodule(node.target)
            return Ref(node.target) if fused.is_relu_module(m) else None
        if node.op == "call_function" and node.target in _RELU_FUNCTIONS and node.args == (x,):
            return "relu" if set(node.kwargs) <= {"inplace"} else None
        if node.op == "call_method" and node.target in ("relu", "relu_") and node.args == (x,):
            return "relu"
        return None

    @staticmethod
    def _residual(node, x):
        """The other operand when node adds x and another value, else None."""
        add = ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
               or (node.op == "call_method" and node.target in ("add", "add_")))
        if not add or len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        if a is x and b is not x:
            return b
        if b is x and a is not x:
            return a
        return None

    def _next(self, node, skipped=None):
        """node's only user, or None; with a list `skipped`, calls of nn.Identity in
        between (timm's unused drop_block and aa slots) are passed over and collected."""
        while len(node.users) == 1:
            user = next(iter(node.users))
            if skipped is None or not self._identity(user, node):
                return user
            skipped.append(user)
            node = user
        return None

    def _identity(self, node, x):
        if node.op != "call_module" or node.args != (x,) or node.kwargs:
            return False
        m = self.module.get_submodule(node.target)
        return type(m) is torch.nn.Identity and not has_forward_hooks(m)

    def rewrite(self, graph):
        """Replaces the chains in graph; returns how many."""
        done = set()
        count = 0
        for node in list(graph.nodes):
            if node in done:
                continue
            chain = self._conv_chain(node) or self._bn_chain(node) or self._cat(node)
            if chain is None:
                continue
            nodes, function, args, source, target = chain
            done.update(nodes)
            last = nodes[-1]
            with graph.inserting_before(last):
                new = graph.call_function(function, _materialize(graph, tuple(args)))
            last.replace_all_uses_with(new)
            for n in reversed(nodes):
                graph.erase_node(n)
            self.swaps.append((source, target))
            count += 1
        return count

    def _conv_chain(self, node):
        """Conv -> BatchNorm -> (+ residual and/or ReLU)."""
        if self._call(node, "conv") is None:
            return None
        bn = self._next(node)
        if bn is None or bn.args != (node,):
            return None
        if self._call(bn, "bn_act") is not None:  # timm's BatchNorm + activation
            act = self.module.get_submodule(bn.target).act
            if not fused.is_relu_module(act):
                self._leave(bn.target, f"{NO_PASS_SAVED} (its {type(act).__name__} is no ReLU)")
                return None
            return ([node, bn], fused.conv_bn_act,
                    (node.args[0], Ref(node.target), Ref(bn.target), None, None),
                    f"{node.target} -> {bn.target} (ReLU)", "fastcnn conv_bn_relu")
        if self._call(bn, "bn") is None:
            return None
        nodes, residual, act = [node, bn], None, None
        skipped = []
        after = self._next(bn, skipped)
        other = None if after is None else self._residual(after, skipped[-1] if skipped else bn)
        if other is not None:
            nodes += skipped + [after]
            residual = other
        skipped = []
        after = self._next(nodes[-1], skipped)
        if after is not None:
            act = self._act(after, skipped[-1] if skipped else nodes[-1])
            if act is not None:
                nodes += skipped + [after]
        if residual is None and act is None:
            self._leave(bn.target, NO_PASS_SAVED)
            return None
        names = [node.target, bn.target] + (["+"] if residual is not None else []) + (
            [] if act is None else [_name(act)])
        target = "fastcnn conv_bn_relu" + ("" if act else " (relu=False)") + (
            " + residual" if residual is not None else "")
        return (nodes, fused.conv_bn_act,
                (node.args[0], Ref(node.target), Ref(bn.target), act, residual),
                " -> ".join(names), target)

    def _cat(self, node):
        """torch.cat of submodule outputs (an Inception module's branches): each such
        output, used by nothing else, is written by its module into its slice."""
        if node.op != "call_function" or node.target not in (torch.cat, torch.concat):
            return None
        if not node.args or not isinstance(node.args[0], (list, tuple)):
            return None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or set(node.kwargs) - {"dim"}:
            return None
        parts, calls = [], []
        for item in node.args[0]:
            if (isinstance(item, fx.Node) and item.op == "call_module" and len(item.users) == 1
                    and node.args[0].count(item) == 1 and len(item.args) == 1
                    and not item.kwargs and not _random(self.module.get_submodule(item.target))):
                parts.append((Ref(item.target), item.args[0]))
                calls.append(item)
            else:
                parts.append(item)
        if not calls:
            return None
        return (calls + [node], fused.concat, (dim, *parts),
                f"torch.cat({', '.join(_label(i) for i in node.args[0])})",
                "fastcnn concat (each branch writes its slice)")

    def _bn_chain(self, node):
        """BatchNorm -> ReLU (-> Conv)."""
        if node.op != "call_module" or self._call(node, "bn") is None:
            return None
        skipped = []
        relu = self._next(node, skipped)
        act = None if relu is None else self._act(relu, skipped[-1] if skipped else node)
        if act is None:
            return None
        nodes = [node, *skipped, relu]
        skipped = []
        conv = self._next(relu, skipped)
        names = [node.target, _name(act)]
        if (conv is not None and conv.args == (skipped[-1] if skipped else relu,)
                and self._call(conv, "conv") is not None):
            return (nodes + skipped + [conv], fused.bn_act_conv,
                    (node.args[0], Ref(node.target), act, Ref(conv.target)),
                    " -> ".join(names + [conv.target]), "fastcnn bn_relu_conv")
        return (nodes, fused.bn_act, (node.args[0], Ref(node.target), act),
                " -> ".join(names), "fastcnn bn_relu")


def _label(item):
    if isinstance(item, fx.Node):
        return item.target if item.op == "call_module" else item.name
    return repr(item)


def _simple_chain(graph):
    """(conv, bn, act) when graph is one conv_bn_act of its input, without residual, and
    nothing else (torchvision's BasicConv2d): the module can then begin its forward and
    write its output into a slice of a concatenation."""
    nodes = [n for n in graph.nodes if n.op not in ("get_attr", "output")]
    if len(nodes) != 2 or nodes[0].op != "placeholder":
        return None
    call = nodes[1]
    if call.target is not fused.conv_bn_act or call.args[0] is not nodes[0] or call.args[4]:
        return None
    output = next(n for n in graph.nodes if n.op == "output")
    if output.args[0] is not call:
        return None
    conv, bn, act = call.args[1:4]
    return (conv.target, bn.target, Ref(act.target) if isinstance(act, fx.Node) else act)


def _random(module):
    """Whether module draws random numbers (dropout), whose order a moved call changes."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd)
               for m in module.modules())


def _name(act):
    return "relu()" if act == "relu" else act.path


def _plain_signature(module):
    """Why module's forward cannot be rewritten from its arguments, or None: only forwards
    of required positional arguments are (fx would fix an optional one at its default)."""
    for p in list(inspect.signature(type(module).forward).parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return f"forward takes *args, **kwargs or keyword-only arguments ({p.name})"
        if p.default is not p.empty:
            return f"forward has an optional argument ({p.name}), which fx would fix"
    return None


def _trace(module, training):
    was = module.training
    module.training = training
    try:
        return _Shallow(module).trace(module)
    finally:
        module.training = was


def _forward_of(module, graph):
    """The Python function fx generates for graph, which reads the module's submodules by
    name on each call; None when it needs attributes the module does not have (tensor
    constants fx would keep on a GraphModule)."""
    for node in graph.nodes:
        if node.op == "get_attr":
            try:
                functools.reduce(getattr, node.target.split("."), module)
            except AttributeError:
                return None
    graph.lint()
    return type(fx.GraphModule(module, graph)).forward


def rewrite(module, modes):
    """Rewrites module's forward for the `modes` (True: training, False: eval) in place.
    Returns (swaps, left) for the report: ([(source, target)], [(path, class, reason)]),
    path "" for the module itself."""
    this = type(module).__name__
    why = _plain_signature(module)
    if why is not None:
        return [], [("", this, why)]
    forwards, swaps, left, chains = {}, [], [], []
    for training in modes:
        try:
            graph = _trace(module, training)
        except Exception as error:  # fx's TraceError, or whatever the forward raised
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return [], [("", this, f"torch.fx cannot trace its forward "
                         f"({type(error).__name__}: {reason[:120]})")]
        rewriter = Rewriter(module)
        if rewriter.rewrite(graph) == 0:
            left += [r for r in rewriter.left if r not in left]
            continue
        forward = _forward_of(module, graph)
        if forward is None:
            return [], [("", this, "its traced forward keeps tensor constants")]
        forwards[training] = forward
        chains.append(_simple_chain(graph))
        swaps += [s for s in rewriter.swaps if s not in swaps]
        left += [r for r in rewriter.left if r not in left]
    if forwards:
        _install(module, forwards.get(True), forwards.get(False))
        if len(chains) == len(modes) and all(c == chains[0] for c in chains) and chains[0]:
            _add_begin_forward(module, *chains[0])
    return swaps, left


def _install(module, train_forward, eval_forward):
    original = type(module)
    train_forward = train_forward or original.forward
    eval_forward = eval_forward or original.forward

    def forward(self, *args, **kwargs):
        return (train_forward if self.training else eval_forward)(self, *args, **kwargs)

    install_forward(module, forward)


def _add_begin_forward(module, conv, bn, act):
    def begin_forward(self, x):
        a = self.get_submodule(act.path) if isinstance(act, Ref) else act
        return fused.begin_conv_bn_act(x, self.get_submodule(conv), self.get_submodule(bn), a)

    type(module).begin_forward = begin_forward


def install_forward(module, forward):
    """Gives module a subclass of its class whose forward is `forward`; the original class
    is its `fastcnn_original_class`, which fastcnn.restore puts back."""
    original = type(module)
    module.__class__ = type(original.__name__, (original,), {
        "forward": forward, "__module__": original.__module__,
        "__qualname__": original.__qualname__, "fastcnn_original_class": original})
