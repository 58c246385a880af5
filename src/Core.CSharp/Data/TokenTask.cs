using static TorchSharp.torch;

namespace MechInterp.Data;

/// <summary>
/// A batch for next-token training: tokens [batch, pos]; LossMask [batch, pos - 1] marks which
/// next-token predictions count; Labels, when the task has ground truth, map a feature name to
/// per-token category ids [batch, pos] (names in <see cref="ITokenTask.Features"/>).
/// </summary>
public sealed record TokenBatch(Tensor Tokens, Tensor LossMask, IReadOnlyDictionary<string, Tensor> Labels) : IDisposable
{
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
