using System.Buffers.Binary;
using System.Text;

namespace MechInterp.Runtime;

/// <summary>
/// Reads and patches the GNU version-need table (.gnu.version_r) of a 64-bit little-endian ELF file.
/// A version need marked weak (VER_FLG_WEAK) no longer stops the dynamic loader when the
/// providing library lacks that version; symbols bound to it still resolve by name.
/// </summary>
internal static class ElfVersionNeeds
{
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlagWeak = 0x2;

    /// <summary>One (library, version) requirement and where its flags live in the file.</summary>
    internal readonly record struct VersionNeed(string File, string Version, ushort Flags, long FlagsOffset)
    {
        public bool IsWeak => (Flags & VerFlagWeak) != 0;
    }

    /// <summary>Every version need of the ELF image in <paramref name="elf"/>.</summary>
    public static List<VersionNeed> Read(ReadOnlySpan<byte> elf, string pathForErrors)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException($"{pathForErrors} is not an ELF file.");
        if (elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException($"{pathForErrors} is not a 64-bit little-endian ELF file (class {elf[4]}, data {elf[5]}).");

        long shoff = (long)U64(elf, 0x28);
        int shentsize = U16(elf, 0x3A);
        int shnum = U16(elf, 0x3C);
        if (shoff <= 0 || shentsize < 64 || shoff + (long)shnum * shentsize > elf.Length)
            throw new InvalidDataException($"{pathForErrors}: section header table (offset {shoff}, {shnum} x {shentsize}) lies outside the file ({elf.Length} bytes).");

        var needs = new List<VersionNeed>();
        for (int s = 0; s < shnum; s++)
        {
            int sh = checked((int)(shoff + (long)s * shentsize));
            if (U32(elf, sh + 4) != ShtGnuVerneed) continue;

            long offset = (long)U64(elf, sh + 0x18);
            int link = (int)U32(elf, sh + 0x28);
            int count = (int)U32(elf, sh + 0x2C);
            int strSh = checked((int)(shoff + (long)link * shentsize));
            long strOffset = (long)U64(elf, strSh + 0x18);

            long vn = offset;
            for (int i = 0; i < count; i++)
            {
                int cnt = U16(elf, (int)vn + 2);
                string file = CString(elf, strOffset + U32(elf, (int)vn + 4));
                long aux = vn + U32(elf, (int)vn + 8);
                for (int j = 0; j < cnt; j++)
                {
                    ushort flags = U16(elf, (int)aux + 4);
                    string version = CString(elf, strOffset + U32(elf, (int)aux + 8));
                    needs.Add(new VersionNeed(file, version, flags, aux + 4));
                    uint nextAux = U32(elf, (int)aux + 12);
                    if (nextAux == 0) break;
                    aux += nextAux;
                }
                uint next = U32(elf, (int)vn + 12);
                if (next == 0) break;
                vn += next;
            }
        }
        return needs;
    }

    /// <summary>Marks the given needs weak in <paramref name="elf"/>, in place.</summary>
    public static void MarkWeak(Span<byte> elf, IEnumerable<VersionNeed> needs)
    {
        foreach (var need in needs)
            BinaryPrimitives.WriteUInt16LittleEndian(elf.Slice((int)need.FlagsOffset, 2), (ushort)(need.Flags | VerFlagWeak));
    }

    /// <summary>
    /// The version names a shared library defines, found as NUL-terminated strings in its bytes:
    /// enough to decide whether "GLIBCXX_3.4.32" is provided, without a full verdef walk.
    /// </summary>
    public static bool DefinesVersion(ReadOnlySpan<byte> library, string version)
    {
        var needle = Encoding.ASCII.GetBytes("\0" + version + "\0");
        return library.IndexOf(needle) >= 0;
    }

    private static ushort U16(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(at, 2));
    private static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(at, 4));
    private static ulong U64(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt64LittleEndian(b.Slice(at, 8));

    private static string CString(ReadOnlySpan<byte> b, long at)
    {
        var rest = b[checked((int)at)..];
        int end = rest.IndexOf((byte)0);
        return Encoding.ASCII.GetString(end < 0 ? rest : rest[..end]);
    }
}
