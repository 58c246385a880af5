namespace MechInterp.Data;

/// <summary>
/// a + b mod p as the sequence [a, b, =, c] where only the prediction of c counts (Nanda et al.'s
/// grokking setup). Tokens 0..p-1 are numbers, p is '='. A fixed fraction of all p² pairs is the
/// training set, chosen by the split seed; <see cref="Sample"/> draws from it.
/// </summary>
public sealed class ModularAddition : ITokenTask
{
    private readonly (int A, int B)[] train;
    private readonly (int A, int B)[] test;

    public ModularAddition(int p = 113, double trainFraction = 0.3, int splitSeed = 0)
    {
        if (p < 2) throw new ArgumentOutOfRangeException(nameof(p), p, $"p must be at least 2, got {p}");
        if (!(trainFraction > 0 && trainFraction <= 1))
            throw new ArgumentOutOfRangeException(nameof(trainFraction), trainFraction, $"train fraction must be in (0, 1], got {trainFraction}");
        P = p;
        var pairs = (from a in Enumerable.Range(0, p) from b in Enumerable.Range(0, p) select (a, b)).ToArray();
        new Random(splitSeed).Shuffle(pairs);
        int n = Math.Max(1, (int)Math.Round(trainFraction * pairs.Length));
        train = pairs[..n];
        test = pairs[n..];
    }

    public int P { get; }
    public string Name => "modular_addition";
    public int VocabSize => P + 1;
    public int SequenceLength => 4;
    public IReadOnlyDictionary<string, string[]> Features { get; } = new Dictionary<string, string[]>();
    public int TrainSize => train.Length;

    public TokenBatch Sample(int batchSize, Random rng)
    {
        Batches.RequirePositive(batchSize, nameof(batchSize));
        return Build(Enumerable.Range(0, batchSize).Select(_ => train[rng.Next(train.Length)]).ToArray());
    }

    /// <summary>The whole training set (full-batch training) or the held-out pairs.</summary>
    public TokenBatch All(bool trainSet = true) => Build(trainSet ? train : test);

    private TokenBatch Build((int A, int B)[] pairs)
    {
        var tokens = new long[pairs.Length, 4];
        var mask = new bool[pairs.Length, 3];
        for (int i = 0; i < pairs.Length; i++)
        {
            var (a, b) = pairs[i];
            tokens[i, 0] = a;
            tokens[i, 1] = b;
            tokens[i, 2] = P;
            tokens[i, 3] = (a + b) % P;
            mask[i, 2] = true;
        }
        return new TokenBatch(Batches.Int64(tokens), Batches.Mask(mask), new Dictionary<string, TorchSharp.torch.Tensor>());
    }
}
