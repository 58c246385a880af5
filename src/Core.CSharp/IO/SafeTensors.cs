using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MechInterp.Native;
using static TorchSharp.torch;

namespace MechInterp.IO;

/// <summary>
/// The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data),
/// so Python's safetensors library opens our checkpoints and caches. Writes are atomic; reads check
/// the header against the file size and say exactly what is wrong.
/// </summary>
public static class SafeTensors
{
    private static readonly (ScalarType Type, string Name, int Size)[] DTypes =
    [
        (ScalarType.Float32, "F32", 4), (ScalarType.Float64, "F64", 8), (ScalarType.Float16, "F16", 2),
        (ScalarType.BFloat16, "BF16", 2), (ScalarType.Int64, "I64", 8), (ScalarType.Int32, "I32", 4),
        (ScalarType.Int16, "I16", 2), (ScalarType.Int8, "I8", 1), (ScalarType.Byte, "U8", 1), (ScalarType.Bool, "BOOL", 1),
    ];

    public static string DTypeName(ScalarType t) =>
        DTypes.FirstOrDefault(d => d.Type == t).Name ?? throw new NotSupportedException($"dtype {t} has no safetensors name");

    /// <summary>Writes tensors (and string metadata) to <paramref name="path"/> via a temp file renamed into place.</summary>
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
            header["__metadata__"] = new JsonObject(metadata.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value))));
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        long offset = 0;
        foreach (var (name, t) in ordered)
        {
            if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor");
            long size = t.numel() * t.ElementSize;
            header[name] = new JsonObject
            {
                ["dtype"] = DTypeName(t.dtype),
                ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode?)JsonValue.Create(s)).ToArray()),
                ["data_offsets"] = new JsonArray(JsonValue.Create(offset), JsonValue.Create(offset + size)),
            };
            offset += size;
        }
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;   // data starts 8-byte aligned
        var headerBytes = new byte[padded];
        Array.Fill(headerBytes, (byte)' ');
        json.CopyTo(headerBytes, 0);

        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            stream.Write(length);
            stream.Write(headerBytes);
            foreach (var (_, t) in ordered)
            {
                using var c = t.detach().cpu().contiguous();
                NativeTensors.WriteBytes(c, stream);
            }
        });
    }

    /// <summary>One tensor's header entry.</summary>
    public sealed record Entry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

    /// <summary>The largest header we parse: a header is names and shapes, never data.</summary>
    public const int MaxHeaderBytes = 100_000_000;

    /// <summary>The most dimensions a tensor may have.</summary>
    public const int MaxRank = 64;

    /// <summary>Messages quote at most this many characters of a name or value taken from the file.</summary>
    internal const int MaxQuoted = 80;

    /// <summary>No error message is longer than this, whatever the file holds.</summary>
    public const int MaxMessageChars = 2000;

    /// <summary>
    /// The parsed and checked header of a safetensors file: entries and metadata, no data read. Every problem with
    /// the file raises <see cref="InvalidDataException"/> naming the file and the problem (a missing file:
    /// <see cref="FileNotFoundException"/>).
    /// </summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"no safetensors file at {path}", path);
        using var stream = File.OpenRead(path);
        long fileLength = stream.Length;
        if (fileLength < 8) throw Corrupt(path, $"the file is {fileLength} bytes, shorter than the 8-byte header length");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8))
            throw Corrupt(path, $"the header claims {headerLength} bytes but the file has {fileLength - 8} after the length field (truncated or not safetensors)");
        if (headerLength > MaxHeaderBytes)
            throw Corrupt(path, $"the header claims {headerLength} bytes, more than the {MaxHeaderBytes} a header may have");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);

        try { _ = StrictUtf8.GetCharCount(headerBytes); }
        catch (DecoderFallbackException e)
        {
            throw Corrupt(path, $"the header is not valid UTF-8 (byte {e.Index} of the header)");
        }
        JsonDocument document;
        try { document = JsonDocument.Parse(headerBytes, new JsonDocumentOptions { MaxDepth = 8 }); }
        catch (JsonException e)
        {
            throw Corrupt(path, $"the header is not valid JSON: {e.Message}");
        }
        using (document)
        {
            var header = document.RootElement;
            if (header.ValueKind != JsonValueKind.Object)
                throw Corrupt(path, $"the header must be a JSON object, got {header.ValueKind}");
            var metadata = new Dictionary<string, string>();
            var entries = new List<Entry>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in header.EnumerateObject())
            {
                string name = property.Name;
                if (!names.Add(name)) throw Corrupt(path, $"the header names {Quote(name)} twice");
                if (name == "__metadata__") ReadMetadata(path, property.Value, metadata);
                else entries.Add(ReadEntry(path, name, property.Value));
            }
            long dataStart = 8 + (long)headerLength;
            long dataLength = fileLength - dataStart;
            long covered = 0;
            foreach (var entry in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
            {
                if (entry.Begin != covered)
                    throw Corrupt(path, $"tensor {Quote(entry.Name)} starts at byte {entry.Begin} of the data but the previous tensor ends at {covered} (holes or overlaps)");
                covered = entry.End;
            }
            if (covered != dataLength)
                throw Corrupt(path, $"the header describes {covered} bytes of tensor data but the file holds {dataLength} (truncated or padded)");
            return (entries, metadata, dataStart);
        }
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static void ReadMetadata(string path, JsonElement node, Dictionary<string, string> metadata)
    {
        if (node.ValueKind != JsonValueKind.Object)
            throw Corrupt(path, $"__metadata__ must be an object of strings, got {node.ValueKind}");
        foreach (var item in node.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
                throw Corrupt(path, $"__metadata__[{Quote(item.Name)}] must be a string, got {item.Value.ValueKind}");
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
                throw Corrupt(path, $"__metadata__ names {Quote(item.Name)} twice");
        }
    }

    private static Entry ReadEntry(string path, string name, JsonElement node)
    {
        string what = $"tensor {Quote(name)}";
        if (node.ValueKind != JsonValueKind.Object)
            throw Corrupt(path, $"{what} must be an object with dtype, shape and data_offsets, got {node.ValueKind}");
        JsonElement Field(string field, JsonValueKind kind)
        {
            if (!node.TryGetProperty(field, out var value)) throw Corrupt(path, $"{what} has no {field}");
            if (value.ValueKind != kind) throw Corrupt(path, $"{what} has a {field} that is a {value.ValueKind}, not a {kind}");
            return value;
        }
        long[] Integers(string field)
        {
            var array = Field(field, JsonValueKind.Array);
            int count = array.GetArrayLength();
            if (count > MaxRank) throw Corrupt(path, $"{what} has {count} entries in {field}, more than {MaxRank}");
            var values = new long[count];
            int i = 0;
            foreach (var item in array.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long v) || v < 0)
                    throw Corrupt(path, $"{what} has {field}[{i}] = {Quote(item.GetRawText())}, not a non-negative int64");
                values[i++] = v;
            }
            return values;
        }

        string dtypeName = Field("dtype", JsonValueKind.String).GetString()!;
        var dtype = DTypes.FirstOrDefault(d => d.Name == dtypeName);
        if (dtype.Name is null)
            throw Corrupt(path, $"{what} has unknown dtype {Quote(dtypeName)} (known: {string.Join(", ", DTypes.Select(d => d.Name))})");
        long[] shape = Integers("shape");
        long[] offsets = Integers("data_offsets");
        if (offsets.Length != 2 || offsets[1] < offsets[0])
            throw Corrupt(path, $"{what} has invalid data_offsets [{string.Join(", ", offsets)}] (want [begin, end] with begin <= end)");
        long expected;
        try
        {
            expected = dtype.Size;
            foreach (long dim in shape) expected = checked(expected * dim);
        }
        catch (OverflowException)
        {
            throw Corrupt(path, $"{what} ({dtypeName} [{string.Join(", ", shape)}]) has more bytes than an int64 counts");
        }
        if (offsets[1] - offsets[0] != expected)
            throw Corrupt(path, $"{what} ({dtypeName} [{string.Join(", ", shape)}]) needs {expected} bytes but its offsets span {offsets[1] - offsets[0]}");
        return new Entry(name, dtype.Type, shape, offsets[0], offsets[1]);
    }

    /// <summary>A name or value from the file, quoted and cut to <see cref="MaxQuoted"/> characters.</summary>
    internal static string Quote(string text) =>
        text.Length <= MaxQuoted ? $"'{text}'" : $"'{text[..MaxQuoted]}…' ({text.Length} characters)";

    /// <summary>Reads every tensor (on the CPU) and the metadata; nothing is returned unless the whole file checks out.</summary>
    public static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) Read(string path)
    {
        var (entries, metadata, dataStart) = ReadHeader(path);
        var tensors = new Dictionary<string, Tensor>();
        try
        {
            using var stream = File.OpenRead(path);
            foreach (var entry in entries)
            {
                var t = empty(entry.Shape, dtype: entry.DType);
                tensors[entry.Name] = t;
                stream.Seek(dataStart + entry.Begin, SeekOrigin.Begin);
                NativeTensors.ReadBytes(stream, t);
            }
        }
        catch (Exception e)
        {
            foreach (var t in tensors.Values) t.Dispose();
            if (e is EndOfStreamException) throw Corrupt(path, "the file ended before its tensor data (changed while being read)");
            throw;
        }
        return (tensors, metadata);
    }

    /// <summary>The one exception a malformed file raises: the file, then the problem, at most <see cref="MaxMessageChars"/> long.</summary>
    internal static InvalidDataException Corrupt(string path, string problem)
    {
        string message = $"{path}: {problem}";
        return new(message.Length <= MaxMessageChars ? message : message[..(MaxMessageChars - 40)] + $"… ({message.Length - MaxMessageChars + 40} more characters)");
    }
}
