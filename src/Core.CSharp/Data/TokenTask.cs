using static TorchSharp.torch;

namespace MechInterp.Data;

/// <summary>
/// A batch for next-token training: tokens [batch, pos]; LossMask [batch, pos - 1] marks which
/// next-token predictions count; Labels, when the task has ground truth, map a feature name to
/// per-token category ids [batch, pos] (names in <see cref="ITokenTask.Features"/>).
/// </summary>
public sealed record TokenBatch(Tensor Tokens, Tensor LossMask, IReadOnlyDictionary<string, Tensor> Labels) : IDisposable
{
    /// <summary>
    /// One batch per instance of a batched model → one batch with a leading instance dimension: tokens
    /// [instance, batch, pos], loss mask [instance, batch, pos − 1], labels [instance, batch, pos].
    /// </summary>
    public static TokenBatch Stack(IReadOnlyList<TokenBatch> batches)
    {
        if (batches.Count == 0) throw new ArgumentException("nothing to stack: no batches", nameof(batches));
        for (int i = 1; i < batches.Count; i++)
            if (!batches[i].Tokens.shape.SequenceEqual(batches[0].Tokens.shape))
                throw new ArgumentException($"batch {i} has tokens [{string.Join(", ", batches[i].Tokens.shape)}], batch 0 [{string.Join(", ", batches[0].Tokens.shape)}]: instances must share one shape", nameof(batches));
        return new TokenBatch(
            stack(batches.Select(b => b.Tokens).ToArray()),
            stack(batches.Select(b => b.LossMask).ToArray()),
            batches[0].Labels.Keys.ToDictionary(k => k, k => stack(batches.Select(b => b.Labels[k]).ToArray())));
    }

    /// <summary>Instance i of a stacked batch (views): tokens [batch, pos], the mask and labels likewise.</summary>
    public TokenBatch Instance(int i)
    {
        if (Tokens.dim() != 3) throw new InvalidOperationException($"Instance(i) reads a stacked batch [instance, batch, pos]; these tokens are [{string.Join(", ", Tokens.shape)}]");
        if (i < 0 || i >= Tokens.shape[0]) throw new ArgumentOutOfRangeException(nameof(i), i, $"instance {i} is outside [0, {Tokens.shape[0]})");
        return new TokenBatch(Tokens.select(0, i), LossMask.select(0, i), Labels.ToDictionary(kv => kv.Key, kv => kv.Value.select(0, i)));
    }

    public void Dispose()
    {
        Tokens.Dispose();
        LossMask.Dispose();
        foreach (var l in Labels.Values) l.Dispose();
    }
}

/// <summary>A synthetic task, deterministic from the seed of the generator it samples with.</summary>
public interface ITokenTask
{
    string Name { get; }
    int VocabSize { get; }
    int SequenceLength { get; }

    /// <summary>Ground-truth features: name → category names (ids index this array). Empty when none.</summary>
    IReadOnlyDictionary<string, string[]> Features { get; }

    TokenBatch Sample(int batchSize, Random rng);
}

internal static class Batches
{
    public static Tensor Int64(long[,] values) =>
        tensor(values.Cast<long>().ToArray(), [values.GetLength(0), values.GetLength(1)]);

    public static Tensor Mask(bool[,] values) =>
        tensor(values.Cast<bool>().ToArray(), [values.GetLength(0), values.GetLength(1)]);

    public static void RequirePositive(int value, string name)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive, got {value}");
    }
}
