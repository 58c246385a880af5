namespace MechInterp.Hooks;

/// <summary>Every hook point of a model by name, in forward order; names are unique.</summary>
public sealed class HookRegistry
{
    private readonly Dictionary<string, HookPoint> points = [];

    internal HookPoint Add(string name)
    {
        var point = new HookPoint(name);
        if (!points.TryAdd(name, point))
            throw new InvalidOperationException($"hook point '{name}' is defined twice");
        return point;
    }

    public IReadOnlyDictionary<string, HookPoint> Points => points;

    public IEnumerable<string> Names => points.Keys;

    public HookPoint this[string name] =>
        points.TryGetValue(name, out var p) ? p
            : throw new KeyNotFoundException($"no hook point named '{name}'; the model has {points.Count}, e.g. {string.Join(", ", points.Keys.Take(8))}");
}
