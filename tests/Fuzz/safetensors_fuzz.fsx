// In-process mutation fuzzer for the safetensors reader and the checkpoint loader (SafeTensors.Read,
// Checkpoint.Load), with a fixed seed so any run replays. Build first (dotnet fsi build.fsx build).
//   dotnet fsi tests/Fuzz/safetensors_fuzz.fsx [--seconds N | --inputs N] [--seed S]
// The rule: every input either loads or raises InvalidDataException (the reader's one documented exception).
// Any other exception is a crash, an input running over 10 s a hang, a process abort kills the run (exit code
// non-zero); crashing inputs are written to artifacts/fuzz/safetensors-crashes/. Exit code 0 only with no crash.
#r "nuget: TorchSharp-cpu, 0.107.0"
#r "../../src/Core.CSharp/bin/Release/net10.0/linux-x64/MechInterp.Core.dll"

open System
open System.Buffers.Binary
open System.IO
open System.Text
open System.Text.Json.Nodes
open MechInterp.Hooks
open MechInterp.IO
open MechInterp.Model

MechInterp.Runtime.TorchRuntime.EnsureLoaded()
MechInterp.Settings.Threads <- 1

let args = fsi.CommandLineArgs |> Array.skip 1
let option name fallback =
    match args |> Array.tryFindIndex ((=) name) with
    | Some i when i + 1 < args.Length -> int64 args.[i + 1]
    | _ -> fallback
let seconds = option "--seconds" 60L
let maxInputs = option "--inputs" Int64.MaxValue
let seed = int (option "--seed" 17L)
let root = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, "..", ".."))
let crashDir = Path.Combine(root, "artifacts", "fuzz", "safetensors-crashes")
let work = Directory.CreateTempSubdirectory("mechinterp-fuzz-").FullName

// ---- seed corpus: files the project writes, and the hostile cases of issue 17 -------------------------------

let fileOf (write: string -> unit) =
    let path = Path.Combine(work, "seed.safetensors")
    write path
    File.ReadAllBytes path

let tiny = DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_vocab = 5, n_ctx = 4, d_mlp = 8)
let checkpointOf (cfg: DecoderConfig) = fileOf (fun p -> use m = new HookedTransformer(cfg) in m.Save p)
let dense = checkpointOf tiny
let moe = checkpointOf (DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_vocab = 5, n_ctx = 4, d_mlp = 8, n_experts = 3,
                                      experts_per_token = 2, positional_embedding_type = "rotary"))
let batched = fileOf (fun p -> use m = HookedTransformer.Batched(tiny, [| 1; 2 |]) in m.Save p)
let tokenized = fileOf (fun p -> use m = new HookedTransformer(tiny) in m.Tokenizer <- MechInterp.Data.InductionTask(5, 2); m.Save p)
let cache = fileOf (fun p -> SafeTensors.Write(p, readOnlyDict [ (HookNames.ResidPost 0, TorchSharp.torch.ones(2L, 3L)) ], readOnlyDict [ ("kind", "activation_cache") ]))

/// The header of a file as JSON, the data after it.
let split (bytes: byte[]) =
    let n = int (BinaryPrimitives.ReadUInt64LittleEndian(ReadOnlySpan bytes))
    Encoding.UTF8.GetString(bytes, 8, n), bytes.[8 + n ..]

let join (header: byte[]) (data: byte[]) =
    let out = Array.zeroCreate<byte> (8 + header.Length + data.Length)
    BinaryPrimitives.WriteUInt64LittleEndian(Span out, uint64 header.Length)
    header.CopyTo(out, 8)
    data.CopyTo(out, 8 + header.Length)
    out

let withConfig (bytes: byte[]) (edit: JsonObject -> unit) =
    let header, data = split bytes
    let h = JsonNode.Parse(header).AsObject()
    let c = JsonNode.Parse(h.["__metadata__"].["config"].GetValue<string>()).AsObject()
    edit c
    h.["__metadata__"].["config"] <- JsonValue.Create(c.ToJsonString())
    join (Encoding.UTF8.GetBytes(h.ToJsonString())) data

let raw (header: string) (dataBytes: int) = join (Encoding.UTF8.GetBytes header) (Array.zeroCreate dataBytes)

let corpus =
    [| dense; moe; batched; cache; tokenized
       withConfig dense (fun c -> c.["d_model"] <- JsonValue.Create 536870913)
       withConfig dense (fun c -> c.["d_vocab"] <- JsonValue.Create 20000000)
       withConfig dense (fun c -> c.["n_layers"] <- JsonValue.Create 20000)
       withConfig dense (fun c -> c.["d_model"] <- JsonValue.Create 1073741824; c.["d_mlp"] <- JsonValue.Create 0)
       withConfig dense (fun c -> c.["n_heads"] <- JsonValue.Create 5; c.["d_head"] <- JsonValue.Create 0)
       raw "{\"x\":{\"dtype\":\"F32\",\"shape\":[4611686018427388160],\"data_offsets\":[0,1024]}}" 1024
       raw "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}" 4
       raw "{\"__metadata__\":[1,2]}" 0
       raw "{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}" 4
       (let b = raw "{\"x\u00e9\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}" 4 in b.[11] <- 0xFFuy; b) |]

// ---- mutations ---------------------------------------------------------------------------------------------

let rng = Random seed
let interestingBytes = "\"{}[],:-09.e\\ "B |> Array.append [| 0uy; 0xFFuy; 0x80uy; 0xC3uy |]
let interestingNumbers =
    [| "0"; "-1"; "1"; "2147483648"; "4294967297"; "4611686018427388160"; "9223372036854775807"; "18446744073709551615"
       "1e400"; "1.5"; "-0"; "536870913"; "20000"; "1e-400" |]
let interestingStrings = [| "F64"; "BOOL"; "U8"; "C64"; "__metadata__"; "config"; "instance_seeds"; "tokenizer"; "version"; "kind"; "induction"; "toy_language"; "vocab_size"; "max_repeat"; "embed.W_E"; "dtype"; "shape"; "data_offsets"; "" |]

let mutate (input: byte[]) : byte[] =
    let b = ResizeArray input
    let pick () = if b.Count = 0 then 0 else rng.Next b.Count
    let headerEnd () = if b.Count < 8 then b.Count else int (min (uint64 b.Count) (8UL + BinaryPrimitives.ReadUInt64LittleEndian(ReadOnlySpan(b.ToArray(), 0, 8))))
    for _ in 1 .. 1 + rng.Next 4 do
        match rng.Next 11 with
        | 0 when b.Count > 0 -> let i = pick () in b.[i] <- b.[i] ^^^ (1uy <<< rng.Next 8)
        | 1 when b.Count > 0 -> b.[pick ()] <- interestingBytes.[rng.Next interestingBytes.Length]
        | 2 when b.Count > 0 -> let i = pick () in b.RemoveRange(i, min (b.Count - i) (1 + rng.Next 16))
        | 3 when b.Count > 0 -> let i = pick () in b.InsertRange(i, b.GetRange(i, min (b.Count - i) (1 + rng.Next 32)))
        | 4 when b.Count >= 8 ->
            let v = match rng.Next 4 with 0 -> uint64 (rng.Next 64) | 1 -> UInt64.MaxValue - uint64 (rng.Next 8) | 2 -> uint64 (b.Count - 8 + rng.Next 9 - 4) | _ -> uint64 (rng.NextInt64())
            let bytes = Array.zeroCreate<byte> 8
            BinaryPrimitives.WriteUInt64LittleEndian(Span bytes, v)
            for i in 0 .. 7 do b.[i] <- bytes.[i]
        | 5 when b.Count > 0 -> let i = pick () in b.RemoveRange(i, b.Count - i)
        | 6 | 7 ->
            // A number in the header (shape, offsets, a config field inside the metadata string) replaced.
            let h = headerEnd ()
            let digits = [| for i in 8 .. h - 1 do if b.[i] >= '0'B && b.[i] <= '9'B && (i = 8 || b.[i - 1] < '0'B || b.[i - 1] > '9'B) then i |]
            if digits.Length > 0 then
                let start = digits.[rng.Next digits.Length]
                let mutable stop = start
                while stop < h && b.[stop] >= '0'B && b.[stop] <= '9'B do stop <- stop + 1
                b.RemoveRange(start, stop - start)
                b.InsertRange(start, Encoding.ASCII.GetBytes(interestingNumbers.[rng.Next interestingNumbers.Length]))
        | 8 ->
            // A quoted string in the header replaced by a dictionary word.
            let h = headerEnd ()
            let quotes = [| for i in 8 .. h - 1 do if b.[i] = '"'B then i |]
            if quotes.Length >= 2 then
                let q = rng.Next(quotes.Length - 1)
                b.RemoveRange(quotes.[q] + 1, quotes.[q + 1] - quotes.[q] - 1)
                b.InsertRange(quotes.[q] + 1, Encoding.UTF8.GetBytes(interestingStrings.[rng.Next interestingStrings.Length]))
        | 9 ->
            // A splice of another corpus file.
            let other = corpus.[rng.Next corpus.Length]
            let i = pick ()
            let j = rng.Next(other.Length)
            b.RemoveRange(i, b.Count - i)
            b.AddRange(other.[j ..])
        | _ -> ()
    b.ToArray()

// ---- the loop --------------------------------------------------------------------------------------------

let input = Path.Combine(work, "input.safetensors")
let mutable current: byte[] = [||]
let mutable startedAt = Diagnostics.Stopwatch.GetTimestamp()
let mutable running = true
let save (kind: string) (bytes: byte[]) =
    Directory.CreateDirectory crashDir |> ignore
    let name = Convert.ToHexString(Security.Cryptography.SHA1.HashData bytes).[..15].ToLowerInvariant()
    let path = Path.Combine(crashDir, $"{kind}-{name}.safetensors")
    File.WriteAllBytes(path, bytes)
    path

// A hang cannot be interrupted in-process: the watchdog saves the input and ends the run.
let watchdog =
    Threading.Thread((fun () ->
        while running do
            Threading.Thread.Sleep 500
            if running && Diagnostics.Stopwatch.GetElapsedTime(startedAt).TotalSeconds > 10.0 then
                eprintfn "HANG: an input ran over 10 s: %s" (save "hang" current)
                exit 3), IsBackground = true)
watchdog.Start()

let clock = Diagnostics.Stopwatch.StartNew()
let mutable inputs = 0L
let mutable crashes = 0
let mutable loaded = 0L
let mutable rejected = 0L
let check (bytes: byte[]) =
    current <- bytes
    startedAt <- Diagnostics.Stopwatch.GetTimestamp()
    File.WriteAllBytes(input, bytes)
    try
        try
            let struct (tensors, _) = SafeTensors.Read input
            for t in tensors.Values do t.Dispose()
            use model = Checkpoint.Load input
            loaded <- loaded + 1L
        with
        | :? InvalidDataException as e ->
            if e.Message.Length > SafeTensors.MaxMessageChars then
                crashes <- crashes + 1
                eprintfn "CRASH: a message of %d characters: %s" e.Message.Length (save "long-message" bytes)
            rejected <- rejected + 1L
        | e ->
            crashes <- crashes + 1
            let message = e.Message.Substring(0, Math.Min(300, e.Message.Length))
            eprintfn "CRASH: %s: %s (%s)" (e.GetType().FullName) message (save "crash" bytes)
    finally
        inputs <- inputs + 1L

for seedInput in corpus do check seedInput
let pool = ResizeArray corpus
while inputs < maxInputs && clock.Elapsed.TotalSeconds < float seconds do
    let parent = pool.[rng.Next pool.Count]
    let child = mutate parent
    check child
    // Keep a bounded pool of recent mutants that still parse as far as a header: they reach deeper code.
    if child.Length < 200_000 && rng.Next 8 = 0 then
        if pool.Count < 512 then pool.Add child else pool.[corpus.Length + rng.Next(pool.Count - corpus.Length)] <- child
running <- false
Directory.Delete(work, true)
printfn "safetensors fuzz: %d inputs (seed %d, %d loaded as checkpoints, %d rejected), %d crashes, 0 hangs, %.0f s"
    inputs seed loaded rejected crashes clock.Elapsed.TotalSeconds
exit (if crashes = 0 then 0 else 1)
