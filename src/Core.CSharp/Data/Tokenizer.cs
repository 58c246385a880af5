using Microsoft.ML.Tokenizers;

namespace MechInterp.Data;

/// <summary>
/// Text ↔ token ids for a model (TransformerLens's tokenizer): the synthetic tasks, whose text is their readable
/// token names separated by spaces ("BOS t3 t7"), and GPT-2's byte-level BPE (<see cref="Gpt2Tokenizer"/>).
/// </summary>
public interface ITokenizer
{
    /// <summary>Token ids are [0, VocabSize).</summary>
    int VocabSize { get; }

    /// <summary>The id prepended by prepend_bos; null when the tokenizer has none.</summary>
    int? BosToken { get; }

    /// <summary>Text → ids, with no BOS added.</summary>
    IReadOnlyList<int> Encode(string text);

    /// <summary>Ids → text; the inverse of <see cref="Encode"/> on its output.</summary>
    string Decode(IEnumerable<int> ids);

    /// <summary>One token as text (TransformerLens's to_str_tokens decodes tokens one at a time).</summary>
    string TokenText(int id);
}

/// <summary>Tokens written as their names separated by whitespace, for tasks whose every token has a readable name.</summary>
internal static class NamedTokens
{
    public static IReadOnlyList<int> Encode(string text, int vocab, Func<int, string> name, ref Dictionary<string, int>? ids)
    {
        ArgumentNullException.ThrowIfNull(text);
        ids ??= Enumerable.Range(0, vocab).ToDictionary(name, i => i);
        var known = ids;
        return text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)
            .Select(word => known.TryGetValue(word, out var id) ? id
                : throw new ArgumentException($"'{(word.Length > 40 ? word[..40] + "…" : word)}' is not a token name of this task (names such as {string.Join(", ", Enumerable.Range(0, Math.Min(vocab, 4)).Select(name))})", nameof(text)))
            .ToArray();
    }

    public static string Decode(IEnumerable<int> ids, Func<int, string> name) => string.Join(" ", ids.Select(name));
}

/// <summary>
/// GPT-2's byte-level BPE (50,257 tokens; BOS = &lt;|endoftext|&gt;, id 50256) from Microsoft.ML.Tokenizers, with the
/// vocabulary from its data package: nothing is downloaded.
/// </summary>
public sealed class Gpt2Tokenizer : ITokenizer
{
    public const int EndOfText = 50256;
    /// <summary>GPT-2's vocabulary size, 50,257.</summary>
    public const int Vocab = 50257;
    private readonly TiktokenTokenizer bpe = TiktokenTokenizer.CreateForModel("gpt2");

    public int VocabSize => Vocab;

    public int? BosToken => EndOfText;

    public IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return bpe.EncodeToIds(text);
    }

    public string Decode(IEnumerable<int> ids)
    {
        var list = ids.ToList();
        foreach (var id in list)
            if (id < 0 || id >= VocabSize) throw new ArgumentOutOfRangeException(nameof(ids), id, $"token id {id} is outside GPT-2's vocabulary [0, {VocabSize})");
        return bpe.Decode(list);
    }

    public string TokenText(int id) => Decode([id]);
}
