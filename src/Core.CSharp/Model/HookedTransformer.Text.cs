using MechInterp.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Text in and out of the model (TransformerLens's to_tokens, to_str_tokens, to_string, generate).</summary>
public sealed partial class HookedTransformer
{
    private ITokenizer? tokenizer;

    /// <summary>
    /// The tokenizer text goes through (the task the model trains on, or <see cref="Gpt2Tokenizer"/>). Checkpoints save
    /// it (<see cref="IO.Checkpoint.Save"/>: Gpt2Tokenizer, InductionTask and ToyLanguage; a model with any other
    /// tokenizer is refused at save until the tokenizer is set to null) and <see cref="Load"/> restores it.
    /// </summary>
    public ITokenizer? Tokenizer
    {
        get => tokenizer;
        set
        {
            if (value is not null && value.VocabSize > Config.d_vocab)
                throw new ArgumentException($"the tokenizer has {value.VocabSize} tokens but the model's d_vocab is {Config.d_vocab}", nameof(value));
            tokenizer = value;
        }
    }

    private ITokenizer RequireTokenizer() =>
        tokenizer ?? throw new InvalidOperationException("the model has no tokenizer: set model.Tokenizer (the task it was trained on, or new Gpt2Tokenizer())");

    /// <summary>Text → tokens [1, pos] int64, with the tokenizer's BOS first when <paramref name="prependBos"/> (TransformerLens's default).</summary>
    public Tensor ToTokens(string text, bool prependBos = true)
    {
        var t = RequireTokenizer();
        var ids = t.Encode(text).Select(i => (long)i);
        if (prependBos)
            ids = ids.Prepend(t.BosToken ?? throw new InvalidOperationException("the tokenizer has no BOS token: call with prependBos: false"));
        var array = ids.ToArray();
        if (array.Length == 0) throw new ArgumentException("the text has no tokens (and no BOS was prepended)", nameof(text));
        return tensor(array, [1, array.Length]);
    }

    /// <summary>Each token of the text as text, BOS first when <paramref name="prependBos"/>.</summary>
    public string[] ToStrTokens(string text, bool prependBos = true)
    {
        using var tokens = ToTokens(text, prependBos);
        return ToStrTokens(tokens);
    }

    /// <summary>Each token of tokens [pos] or [1, pos] as text.</summary>
    public string[] ToStrTokens(Tensor tokens)
    {
        var t = RequireTokenizer();
        return Ids(tokens).Select(t.TokenText).ToArray();
    }

    /// <summary>Tokens [pos] or [1, pos] → text (TransformerLens's to_string).</summary>
    public string ToText(Tensor tokens) => RequireTokenizer().Decode(Ids(tokens));

    private static int[] Ids(Tensor tokens)
    {
        if (tokens.dim() == 2 && tokens.shape[0] == 1) tokens = tokens.squeeze(0);
        if (tokens.dim() != 1 || tokens.dtype != ScalarType.Int64)
            throw new ArgumentException($"tokens must be int64 [pos] or [1, pos], got {tokens.dtype} [{string.Join(", ", tokens.shape)}]", nameof(tokens));
        return tokens.data<long>().Select(i => checked((int)i)).ToArray();
    }

    /// <summary>
    /// Appends <paramref name="maxNewTokens"/> tokens to tokens [batch, pos], each predicted from everything before it:
    /// greedy (argmax) when <paramref name="temperature"/> is 0, else sampled from softmax(logits / temperature),
    /// restricted to the <paramref name="topK"/> most likely tokens when topK > 0, from a generator seeded with
    /// <paramref name="seed"/> (the global one when null). Returns [batch, pos + maxNewTokens], which the caller owns.
    /// Each step runs the whole sequence: at this project's sizes a key-value cache would save little (see README).
    /// </summary>
    public Tensor Generate(Tensor tokens, int maxNewTokens, double temperature = 0, int topK = 0, int? seed = null)
    {
        if (IsBatched) throw new InvalidOperationException("Generate runs one model; take an instance out of the batched model first (Instance(i))");
        if (maxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens, "maxNewTokens must be non-negative");
        if (!(temperature >= 0) || double.IsInfinity(temperature)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "temperature must be finite and non-negative (0: greedy)");
        if (topK < 0 || topK > Config.d_vocab) throw new ArgumentOutOfRangeException(nameof(topK), topK, $"topK must be in [0, d_vocab = {Config.d_vocab}] (0: no limit)");
        if (tokens.dim() == 1) tokens = tokens.unsqueeze(0);
        if (tokens.dim() != 2) throw new ArgumentException($"tokens must be [batch, pos] or [pos], got [{string.Join(", ", tokens.shape)}]", nameof(tokens));
        if (tokens.shape[1] + maxNewTokens > Config.n_ctx)
            throw new ArgumentException($"{tokens.shape[1]} tokens + {maxNewTokens} new exceed n_ctx ({Config.n_ctx})", nameof(maxNewTokens));
        var generator = seed is { } s ? new Generator((ulong)s) : null;
        using var _ = no_grad();
        var current = tokens.clone().DetachFromDisposeScope();
        for (int i = 0; i < maxNewTokens; i++)
        {
            using var scope = NewDisposeScope();
            var logits = forward(current).select(1, -1);                                // [batch, d_vocab]
            Tensor next;
            if (temperature == 0) next = logits.argmax(-1);                              // [batch]
            else
            {
                var scaled = logits.div(temperature);
                if (topK > 0)
                {
                    var kth = scaled.topk(topK, -1).values.narrow(-1, topK - 1, 1);      // [batch, 1]
                    scaled = scaled.masked_fill(scaled.lt(kth), double.NegativeInfinity);
                }
                next = multinomial(scaled.softmax(-1), 1, generator: generator).squeeze(-1);
            }
            var grown = cat([current, next.unsqueeze(1)], 1).DetachFromDisposeScope();   // [batch, pos + i + 1]
            current.Dispose();
            current = grown;
        }
        return current;
    }

    /// <summary>
    /// The prompt's text continued by <see cref="Generate(Tensor, int, double, int, int?)"/>: the prompt and the new
    /// tokens as text (the prepended BOS left out).
    /// </summary>
    public string Generate(string prompt, int maxNewTokens, double temperature = 0, int topK = 0, int? seed = null, bool prependBos = true)
    {
        using var scope = NewDisposeScope();
        var tokens = ToTokens(prompt, prependBos);
        using var all = Generate(tokens, maxNewTokens, temperature, topK, seed);
        return ToText(prependBos ? all.narrow(1, 1, all.shape[1] - 1) : all);
    }
}
