using static TorchSharp.torch;

namespace MechInterp.Hooks;

/// <summary>
/// A hook function: sees the activation at a hook point and returns a replacement, or null to keep it.
/// </summary>
public delegate Tensor? HookFn(Tensor activation, HookPoint hook);

/// <summary>
/// A named place in the forward pass where hooks can read or replace an activation
/// (TransformerLens' HookPoint). With no hooks attached it costs one list check.
/// Inside the model activations carry a leading instance dimension; in an ordinary (unbatched) model
/// the hook point hides it, so hooks see TransformerLens's shapes, and a batched model's hooks see
/// [instance, ...] with the instance first.
/// </summary>
public sealed class HookPoint(string name, bool hidesInstance = false)
{
    private readonly List<(HookFn Fn, bool Observer)> hooks = [];
    private readonly List<(HookFn Fn, BackwardRun Run)> backwardHooks = [];

    /// <summary>The TransformerLens-style name, e.g. "blocks.0.attn.hook_pattern".</summary>
    public string Name { get; } = name;

    /// <summary>True when any hook (replacing or caching, forward or backward) is attached.</summary>
    public bool IsActive => hooks.Count > 0 || backwardHooks.Count > 0;

    /// <summary>
    /// True when a hook that may replace the activation is attached (observers only read it), or a backward hook,
    /// which needs the activation to be the one the rest of the forward pass uses.
    /// </summary>
    public bool HasReplacingHooks => backwardHooks.Count > 0 || hooks.Exists(h => !h.Observer);

    internal void Add(HookFn fn, bool observer) => hooks.Add((fn, observer));

    internal void Remove(HookFn fn) => hooks.RemoveAll(h => h.Fn == fn);

    internal void AddBackward(HookFn fn, BackwardRun run) => backwardHooks.Add((fn, run));

    internal void RemoveBackward(HookFn fn) => backwardHooks.RemoveAll(h => h.Fn == fn);

    internal void Clear()
    {
        hooks.Clear();
        backwardHooks.Clear();
    }

    /// <summary>
    /// For the benchmark only: when set, every hook point returns at once, as if the hook calls were
    /// compiled out; the bench compares this against the normal no-hook path.
    /// </summary>
    internal static bool CompiledOut;

    /// <summary>The hook point whose hook is running on this thread, if any (to name it in errors).</summary>
    [ThreadStatic] private static HookPoint? running;

    internal static HookPoint? Running => running;

    /// <summary>Runs every attached hook in order; each sees the previous one's result.</summary>
    public Tensor Run(Tensor activation)
    {
        if (CompiledOut || (hooks.Count == 0 && backwardHooks.Count == 0)) return activation;
        var forwarded = RunForward(activation);
        return backwardHooks.Count == 0 ? forwarded : BackwardHookFunction.Wrap(forwarded, this, [.. backwardHooks]);
    }

    private Tensor RunForward(Tensor activation)
    {
        if (hooks.Count == 0) return activation;
        var seen = hidesInstance ? activation.select(0, 0) : activation;
        bool replaced = false;
        foreach (var (fn, observer) in hooks.ToArray())
        {
            var outer = running;
            running = this;
            Tensor? replacement;
            try { replacement = fn(seen, this); }
            finally { running = outer; }
            if (replacement is null || observer || ReferenceEquals(replacement, seen)) continue;
            Check(replacement, seen, "hook", "activation");
            seen = replacement;
            replaced = true;
        }
        if (!replaced) return activation;
        return hidesInstance ? seen.unsqueeze(0) : seen;
    }

    /// <summary>
    /// Runs the backward hooks on the gradient with respect to this activation (in autograd's backward), each
    /// seeing the previous one's result; returns the gradient to pass on. A hook that throws stops the others and
    /// leaves the gradient as it was: its exception is kept by the call's <see cref="BackwardRun"/> and rethrown
    /// once the backward pass is over (an exception must not cross libtorch's frames).
    /// </summary>
    internal Tensor RunBackward(Tensor grad, (HookFn Fn, BackwardRun Run)[] attached)
    {
        var seen = hidesInstance ? grad.select(0, 0) : grad;
        bool replaced = false;
        foreach (var (fn, run) in attached)
        {
            if (run.Ended || run.Error is not null) continue;
            var outer = running;
            running = this;
            try
            {
                var replacement = fn(seen, this);
                if (replacement is null || ReferenceEquals(replacement, seen)) continue;
                Check(replacement, seen, "backward hook", "gradient");
                seen = replacement;
                replaced = true;
            }
            catch (Exception e) { run.Error = e; return grad; }
            finally { running = outer; }
        }
        if (!replaced) return grad;
        return hidesInstance ? seen.unsqueeze(0) : seen;
    }

    // Everything after a hook assumes the replacement is the activation's kind: libtorch ops given a mismatched
    // dtype or device throw c10::Error, and some TorchSharp entry points (matmul) let it escape and abort the process.
    private void Check(Tensor replacement, Tensor activation, string kind, string what)
    {
        if (!replacement.shape.SequenceEqual(activation.shape))
            throw new InvalidOperationException(
                $"{kind} on '{Name}' returned shape [{string.Join(", ", replacement.shape)}] but the {what} is [{string.Join(", ", activation.shape)}]");
        if (replacement.dtype != activation.dtype)
            throw new InvalidOperationException($"{kind} on '{Name}' returned dtype {replacement.dtype} but the {what} is {activation.dtype}");
        if (replacement.device_type != activation.device_type || replacement.device_index != activation.device_index)
            throw new InvalidOperationException($"{kind} on '{Name}' returned a tensor on {replacement.device} but the {what} is on {activation.device}");
    }

    public override string ToString() => Name;
}

/// <summary>A hook to attach for one call: by exact name, or to every hook point a filter accepts.</summary>
public sealed record Hook(Func<string, bool> Filter, HookFn Fn)
{
    /// <summary>A hook on the hook point with this exact name.</summary>
    public Hook(string name, HookFn fn) : this(n => n == name, fn)
    {
        ExactName = name;
    }

    /// <summary>The name when the hook was made for one hook point; used to report unknown names.</summary>
    public string? ExactName { get; }
}
