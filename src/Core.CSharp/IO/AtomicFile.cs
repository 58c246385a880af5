using System.Diagnostics;
using System.Text;

namespace MechInterp.IO;

/// <summary>
/// The one way the project writes a file: into a temporary file beside the target, flushed to disk, then renamed
/// over it, so a crash (even kill -9) leaves either the old file or the new one, never half of one. Temporaries an
/// interrupted earlier save to the same path left behind (their process is gone) are removed by the next save.
/// </summary>
public static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> through <paramref name="write"/>, which gets the temporary file's stream.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        RemoveOrphans(full);
        string temp = TempName(full, Environment.ProcessId);
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, new UTF8Encoding(false).GetBytes(text));

    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        byte[] copy = bytes.ToArray();
        Write(path, s => s.Write(copy));
    }

    /// <summary>Temporaries of <paramref name="fullPath"/>: "name.{pid}.{guid}.tmp" in the same directory (a rename never crosses file systems).</summary>
    internal static string TempName(string fullPath, int pid) => $"{fullPath}.{pid}.{Guid.NewGuid():N}.tmp";

    /// <summary>
    /// Deletes the temporaries of <paramref name="fullPath"/> whose writer is no longer running. A live writer's file
    /// (another process saving the same path right now) is left alone: its rename decides who wins.
    /// </summary>
    internal static int RemoveOrphans(string fullPath)
    {
        string dir = Path.GetDirectoryName(fullPath)!, name = Path.GetFileName(fullPath);
        int removed = 0;
        IEnumerable<string> candidates;
        try { candidates = Directory.EnumerateFiles(dir, name + ".*.tmp").ToList(); }
        catch (IOException) { return 0; }
        foreach (string file in candidates)
        {
            // name.{pid}.{32 hex}.tmp: anything else with that prefix is not ours.
            string[] parts = Path.GetFileName(file)[(name.Length + 1)..].Split('.');
            if (parts.Length != 3 || parts[1].Length != 32 || !int.TryParse(parts[0], out int pid)) continue;
            if (IsRunning(pid)) continue;   // a writer still at work (this process included)
            if (TryDelete(file)) removed++;
        }
        return removed;
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    private static bool TryDelete(string file)
    {
        try
        {
            File.Delete(file);
            return true;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }
}
