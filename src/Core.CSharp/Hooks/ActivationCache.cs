using static TorchSharp.torch;

namespace MechInterp.Hooks;

/// <summary>
/// Activations recorded by a forward pass, keyed by hook name (TransformerLens' ActivationCache).
/// Owns its tensors (detached from autograd and from any dispose scope): dispose it when done.
/// </summary>
public sealed class ActivationCache : IDisposable
{
    private readonly Dictionary<string, Tensor> store;
    private bool disposed;

    public ActivationCache(Dictionary<string, Tensor> activations) => store = activations;

    /// <summary>The activation at a hook point; the error lists what the cache holds.</summary>
    public Tensor this[string name]
    {
        get
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (store.TryGetValue(name, out var t)) return t;
            throw new KeyNotFoundException(
                $"'{name}' is not in the cache (it holds {store.Count} activations: {string.Join(", ", store.Keys.Take(12))}{(store.Count > 12 ? ", ..." : "")}); " +
                "check the name, and that the names filter of RunWithCache let it through");
        }
    }

    /// <summary>Hook names in the order the forward pass reached them.</summary>
    public IReadOnlyCollection<string> Keys => store.Keys;

    public bool ContainsKey(string name) => store.ContainsKey(name);

    public bool TryGetValue(string name, out Tensor tensor) => store.TryGetValue(name, out tensor!);

    public int Count => store.Count;

    /// <summary>
    /// Instance i of a batched model's cache (every activation [instance, ...]) as a cache of that instance's
    /// activations, with an ordinary model's shapes: views, so it costs no copy. Dispose it when done (the views
    /// only; this cache keeps its tensors).
    /// </summary>
    public ActivationCache Instance(int i)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        foreach (var (name, t) in store)
            if (t.dim() == 0 || i < 0 || i >= t.shape[0])
                throw new ArgumentOutOfRangeException(nameof(i), i, $"instance {i} is outside '{name}' [{string.Join(", ", t.shape)}]; take instances from a batched model's cache");
        return new ActivationCache(store.ToDictionary(kv => kv.Key, kv => kv.Value.select(0, i)));
    }

    /// <summary>Writes the cache as a safetensors file (keys are hook names), atomically.</summary>
    public void Save(string path)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        IO.SafeTensors.Write(path, store, new Dictionary<string, string> { ["kind"] = "activation_cache" });
    }

    /// <summary>Reads a cache written by <see cref="Save"/>.</summary>
    public static ActivationCache Load(string path) => new(IO.SafeTensors.Read(path).Tensors);

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var t in store.Values) t.Dispose();
        store.Clear();
    }
}
