using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.IO;

/// <summary>HookedTransformer checkpoints: TransformerLens state-dict names, the config as JSON metadata.</summary>
public static class Checkpoint
{
    /// <summary>Buffers TransformerLens keeps in its state dicts; we recompute them, so a file may carry them.</summary>
    private static readonly string[] IgnoredSuffixes = [".IGNORE", ".mask", ".rotary_sin", ".rotary_cos"];

    /// <summary>A batched model's checkpoint lists its instances' seeds under this metadata key (parameters then carry the instance dimension).</summary>
    public const string InstanceSeedsKey = "instance_seeds";

    public static void Save(HookedTransformer model, string path)
    {
        var metadata = new Dictionary<string, string> { ["config"] = model.Config.ToJson(), ["format"] = "pt" };
        if (model.IsBatched) metadata[InstanceSeedsKey] = System.Text.Json.JsonSerializer.Serialize(model.Seeds);
        SafeTensors.Write(path, model.StateDict(), metadata);
    }

    /// <summary>The most instances a checkpoint may declare, so a corrupt header cannot ask for unbounded memory.</summary>
    public const int MaxInstances = 4096;

    public static HookedTransformer Load(string path)
    {
        var (entries, metadata, _) = SafeTensors.ReadHeader(path);
        if (!metadata.TryGetValue("config", out var json))
            throw new InvalidDataException($"{path}: no __metadata__[\"config\"]; this is not a MechInterp checkpoint");
        DecoderConfig config;
        try { config = DecoderConfig.FromJson(json); }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: __metadata__[\"config\"] is not a valid config: {e.Message}", e);
        }

        int[]? seeds = null;
        if (metadata.TryGetValue(InstanceSeedsKey, out var seedJson))
        {
            try { seeds = System.Text.Json.JsonSerializer.Deserialize<int[]>(seedJson); }
            catch (System.Text.Json.JsonException e)
            {
                throw new InvalidDataException($"{path}: __metadata__[\"{InstanceSeedsKey}\"] is not a list of seeds: {e.Message}", e);
            }
            if (seeds is null || seeds.Length == 0 || seeds.Length > MaxInstances)
                throw new InvalidDataException($"{path}: __metadata__[\"{InstanceSeedsKey}\"] must list 1 to {MaxInstances} seeds, got '{seedJson}'");
        }

        var model = HookedTransformer.Create(config, seeds);
        var expected = model.StateDict();
        var found = entries.ToDictionary(e => e.Name);
        var problems = new List<string>();
        foreach (var (name, parameter) in expected)
        {
            if (!found.TryGetValue(name, out var entry))
                problems.Add($"tensor '{name}' is missing (expected [{string.Join(", ", parameter.shape)}])");
            else if (!entry.Shape.SequenceEqual(parameter.shape))
                problems.Add($"tensor '{name}' has shape [{string.Join(", ", entry.Shape)}], expected [{string.Join(", ", parameter.shape)}]");
            else if (entry.DType != parameter.dtype)
                problems.Add($"tensor '{name}' has dtype {SafeTensors.DTypeName(entry.DType)}, expected {SafeTensors.DTypeName(parameter.dtype)}");
        }
        foreach (var name in found.Keys.Where(n => !expected.ContainsKey(n) && !IgnoredSuffixes.Any(n.EndsWith)))
            problems.Add($"tensor '{name}' is not a parameter of this config");
        if (problems.Count > 0)
        {
            model.Dispose();
            throw new InvalidDataException($"{path}: " + string.Join("; ", problems));
        }

        // Everything checked: only now copy, so nothing is ever partially loaded.
        var (tensors, _) = SafeTensors.Read(path);
        try
        {
            using var _ = no_grad();
            foreach (var (name, parameter) in expected)
                parameter.copy_(tensors[name]);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
        return model;
    }
}
