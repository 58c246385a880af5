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

        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = $"{full}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
            {
                Span<byte> length = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
                stream.Write(length);
                stream.Write(headerBytes);
                foreach (var (_, t) in ordered)
                {
                    using var c = t.detach().cpu().contiguous();
                    stream.Write(NativeTensors.Bytes(c));
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            if (File.Exists(temp)) File.Delete(temp);
            throw;
        }
    }

    /// <summary>One tensor's header entry.</summary>
    public sealed record Entry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

    /// <summary>The parsed and checked header of a safetensors file: entries and metadata, no data read.</summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"no safetensors file at {path}", path);
        long fileLength = new FileInfo(path).Length;
        if (fileLength < 8) throw Corrupt(path, $"the file is {fileLength} bytes, shorter than the 8-byte header length");
        using var stream = File.OpenRead(path);
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8) || headerLength > 100_000_000)
            throw Corrupt(path, $"the header claims {headerLength} bytes but the file has {fileLength - 8} after the length field (truncated or not safetensors)");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);

        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes)?.AsObject() ?? throw Corrupt(path, "the header is JSON null");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw Corrupt(path, $"the header is not a JSON object: {e.Message}");
        }

        var metadata = new Dictionary<string, string>();
        var entries = new List<Entry>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node?.AsObject() ?? [])
                    metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            try
            {
                var o = node!.AsObject();
                string dtypeName = o["dtype"]!.GetValue<string>();
                var dtype = DTypes.FirstOrDefault(d => d.Name == dtypeName);
                if (dtype.Name is null) throw Corrupt(path, $"tensor '{name}' has unknown dtype '{dtypeName}'");
                long[] shape = o["shape"]!.AsArray().Select(s => s!.GetValue<long>()).ToArray();
                var offsets = o["data_offsets"]!.AsArray().Select(s => s!.GetValue<long>()).ToArray();
                if (shape.Any(s => s < 0)) throw Corrupt(path, $"tensor '{name}' has a negative dimension in [{string.Join(", ", shape)}]");
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0])
                    throw Corrupt(path, $"tensor '{name}' has invalid data_offsets [{string.Join(", ", offsets)}]");
                long expected = shape.Aggregate(1L, (a, b) => checked(a * b)) * dtype.Size;
                if (offsets[1] - offsets[0] != expected)
                    throw Corrupt(path, $"tensor '{name}' ({dtypeName} [{string.Join(", ", shape)}]) needs {expected} bytes but its offsets span {offsets[1] - offsets[0]}");
                entries.Add(new Entry(name, dtype.Type, shape, offsets[0], offsets[1]));
            }
            catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException or OverflowException)
            {
                throw Corrupt(path, $"tensor '{name}' has a malformed header entry: {e.Message}");
            }
        }
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;
        long covered = 0;
        foreach (var entry in entries.OrderBy(e => e.Begin))
        {
            if (entry.Begin != covered)
                throw Corrupt(path, $"tensor '{entry.Name}' starts at byte {entry.Begin} of the data but the previous tensor ends at {covered} (holes or overlaps)");
            covered = entry.End;
        }
        if (covered != dataLength)
            throw Corrupt(path, $"the header describes {covered} bytes of tensor data but the file holds {dataLength} (truncated or padded)");
        return (entries, metadata, dataStart);
    }

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
                stream.ReadExactly(NativeTensors.Bytes(t));
            }
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
        return (tensors, metadata);
    }

    private static InvalidDataException Corrupt(string path, string problem) => new($"{path}: {problem}");
}
