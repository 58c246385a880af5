namespace MechInterp.Hooks;

/// <summary>Every hook point of a model by name, in forward order; names are unique.</summary>
public sealed class HookRegistry(bool batched = false)
{
    private readonly Dictionary<string, HookPoint> points = [];

    /// <summary>Whether the model's hooks see a leading instance dimension.</summary>
    public bool Batched { get; } = batched;

    internal HookPoint Add(string name)
    {
        var point = new HookPoint(name, hidesInstance: !Batched);
        if (!points.TryAdd(name, point))
            throw new InvalidOperationException($"hook point '{name}' is defined twice");
        return point;
    }

    /// <summary>A hook point this configuration never runs (TransformerLens has no such activation for it): not listed.</summary>
    internal HookPoint Inactive(string name) => new(name, hidesInstance: !Batched);

    public IReadOnlyDictionary<string, HookPoint> Points => points;

    public IEnumerable<string> Names => points.Keys;

    public HookPoint this[string name] =>
        points.TryGetValue(name, out var p) ? p
            : throw new KeyNotFoundException($"no hook point named '{name}'; the model has {points.Count}, e.g. {string.Join(", ", points.Keys.Take(8))}");
}
