namespace MechInterp.Data;

/// <summary>
/// Repeated random tokens: BOS, r_1..r_h, r_1..r_h. The second half is predictable only by
/// induction (find the earlier occurrence of the current token, copy what followed it).
/// BOS is token 0; random tokens are drawn from [1, vocab).
/// </summary>
public sealed class InductionTask : ITokenTask
{
    public const int Bos = 0;

    public InductionTask(int vocabSize, int halfLength)
    {
        if (vocabSize < 3) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, $"vocab size must be at least 3, got {vocabSize}");
        Batches.RequirePositive(halfLength, nameof(halfLength));
        VocabSize = vocabSize;
        HalfLength = halfLength;
    }

    public string Name => "induction";
    public int VocabSize { get; }
    public int HalfLength { get; }
    public int SequenceLength => 1 + 2 * HalfLength;
    public IReadOnlyDictionary<string, string[]> Features { get; } =
        new Dictionary<string, string[]> { ["half"] = ["bos", "first", "repeated"] };

    public TokenBatch Sample(int batchSize, Random rng)
    {
        Batches.RequirePositive(batchSize, nameof(batchSize));
        var tokens = new long[batchSize, SequenceLength];
        var mask = new bool[batchSize, SequenceLength - 1];
        var half = new long[batchSize, SequenceLength];
        for (int b = 0; b < batchSize; b++)
        {
            tokens[b, 0] = Bos;
            for (int i = 0; i < HalfLength; i++)
            {
                long t = rng.Next(1, VocabSize);
                tokens[b, 1 + i] = t;
                tokens[b, 1 + HalfLength + i] = t;
                half[b, 1 + i] = 1;
                half[b, 1 + HalfLength + i] = 2;
            }
            for (int p = 0; p < SequenceLength - 1; p++) mask[b, p] = true;
        }
        return new TokenBatch(Batches.Int64(tokens), Batches.Mask(mask),
            new Dictionary<string, TorchSharp.torch.Tensor> { ["half"] = Batches.Int64(half) });
    }

    /// <summary>The predictions that only induction can make: positions h+1 .. 2h predict tokens h+2 .. 2h+1.</summary>
    public TorchSharp.torch.Tensor RepeatedHalfMask(int batchSize)
    {
        var mask = new bool[batchSize, SequenceLength - 1];
        for (int b = 0; b < batchSize; b++)
            for (int p = HalfLength + 1; p < SequenceLength - 1; p++) mask[b, p] = true;
        return Batches.Mask(mask);
    }
}
