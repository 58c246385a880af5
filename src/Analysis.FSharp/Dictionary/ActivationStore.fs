/// Activations of one hook, collected over many batches, handed out as shuffled training batches (SAELens's
/// ActivationsStore). Rows are float32 [d_in]. Memory stays bounded: with a spill directory every `ShardRows`
/// rows go to a safetensors shard (tensor "activations" [rows, d_in]) and only one shard is read at a time;
/// without one the store refuses to grow past `MaxRowsInMemory`. Shuffling is within a shard plus a random shard
/// order each epoch, with the remainder of one shard carried into the next.
namespace MechInterp.Analysis.Dictionary

open System
open System.Collections.Generic
open System.IO
open TorchSharp
open MechInterp.Model

type StoreSettings =
    { ShardRows: int
      MaxRowsInMemory: int
      SpillDirectory: string option }

module StoreSettings =
    /// In memory, up to 4M rows (1 GiB at d_in 64).
    let inMemory = { ShardRows = 262_144; MaxRowsInMemory = 4_194_304; SpillDirectory = None }

type ActivationStore(dIn: int, hookName: string, settings: StoreSettings) =
    do
        if dIn < 1 then invalidArg (nameof dIn) $"d_in ({dIn}) must be at least 1"
        if settings.ShardRows < 1 then invalidArg (nameof settings) $"ShardRows ({settings.ShardRows}) must be at least 1"
    let pending = List<torch.Tensor>()       // rows not yet in a shard (or all rows, in memory)
    let mutable pendingRows = 0L
    let shards = List<string * int64>()      // (path, rows) on disk
    let mutable total = 0L

    let spill () =
        match settings.SpillDirectory with
        | Some dir when pendingRows > 0L ->
            Directory.CreateDirectory dir |> ignore
            use rows = torch.cat(pending.ToArray(), 0L)
            let path = Path.Combine(dir, sprintf "activations-%05d.safetensors" shards.Count)
            MechInterp.IO.SafeTensors.Write(path, readOnlyDict [ "activations", rows ], readOnlyDict [ "hook_name", hookName ])
            shards.Add((path, rows.shape.[0]))
            for t in pending do t.Dispose()
            pending.Clear()
            pendingRows <- 0L
        | _ -> ()

    member _.DIn = dIn
    member _.HookName = hookName
    /// Rows held, in memory and on disk.
    member _.Rows = total
    /// The shard files written so far.
    member _.Shards = shards |> Seq.map fst |> List.ofSeq

    /// Appends activations [..., d_in] as rows; NaN or infinite values and a wrong d_in are refused, naming them.
    member _.Add(activations: torch.Tensor) =
        let shape = "[" + String.Join(", ", activations.shape) + "]"
        if activations.dim() < 1L || activations.shape.[activations.shape.Length - 1] <> int64 dIn then
            invalidArg (nameof activations) $"the store for {hookName} holds rows of d_in = {dIn}, got activations of shape {shape}"
        use finite = activations.isfinite()
        if not (finite.all().item<bool>()) then
            let bad = finite.logical_not().sum().item<int64>()
            invalidArg (nameof activations) $"the activations of {hookName} (shape {shape}) contain {bad} NaN or infinite values"
        // The store owns its rows: out of the caller's dispose scope (Collect adds inside one per batch).
        let rows = activations.detach().reshape(-1L, int64 dIn).to_type(torch.float32).clone().DetachFromDisposeScope()
        let n = rows.shape.[0]
        if settings.SpillDirectory.IsNone && total + n > int64 settings.MaxRowsInMemory then
            rows.Dispose()
            invalidArg (nameof activations) $"the store for {hookName} would hold {total + n} rows, over its in-memory limit of {settings.MaxRowsInMemory}; give it a spill directory"
        pending.Add rows
        pendingRows <- pendingRows + n
        total <- total + n
        if pendingRows >= int64 settings.ShardRows then spill ()

    /// Writes what is pending to a shard (with a spill directory), so every row is on disk.
    member _.Flush() = spill ()

    /// An endless stream of shuffled batches: a batch size → [batch, d_in]. The caller owns each batch.
    member this.Sampler(seed: int) : int -> torch.Tensor =
        if total = 0L then invalidOp $"the store for {hookName} is empty"
        let rng = Random(seed)
        let generator = new torch.Generator(uint64 seed)
        let chunks () =
            // The in-memory rows form one chunk; shards are read one at a time.
            let memory = if pending.Count > 0 then [ (fun () -> torch.cat(pending.ToArray(), 0L)) ] else []
            let disk = [ for path, _ in shards -> fun () -> (let struct (tensors, _) = MechInterp.IO.SafeTensors.Read path in tensors.["activations"]) ]
            (memory @ disk) |> List.sortBy (fun _ -> rng.Next())
        let mutable queue : (unit -> torch.Tensor) list = []
        let mutable current : torch.Tensor = torch.empty(0L, int64 dIn).DetachFromDisposeScope()
        let mutable offset = 0L
        fun batch ->
            if batch < 1 then invalidArg (nameof batch) $"batch size ({batch}) must be at least 1"
            let parts = List<torch.Tensor>()
            let mutable need = int64 batch
            while need > 0L do
                if offset >= current.shape.[0] then
                    if queue.IsEmpty then queue <- chunks ()
                    let load = List.head queue
                    queue <- List.tail queue
                    current.Dispose()
                    use rows = load ()
                    use perm = torch.randperm(rows.shape.[0], generator = generator)
                    // Kept across calls, so out of whatever dispose scope the caller runs in; disposed when replaced.
                    current <- rows.index_select(0L, perm).DetachFromDisposeScope()
                    offset <- 0L
                let take = min need (current.shape.[0] - offset)
                parts.Add(current.narrow(0L, offset, take).clone())
                offset <- offset + take
                need <- need - take
            if parts.Count = 1 then parts.[0]
            else
                let b = torch.cat(parts.ToArray(), 0L)
                for p in parts do p.Dispose()
                b

    /// Runs the model on each token batch and stores `hookName`'s activation (e.g. [batch, pos, d_model]).
    static member Collect(model: HookedTransformer, hookName: string, tokenBatches: seq<torch.Tensor>, settings: StoreSettings) =
        if not (model.Hooks.Points.ContainsKey hookName) then
            let _ = model.Hooks.[hookName] in ()        // throws, listing the model's hook names
        let mutable store : ActivationStore option = None
        use _noGrad = torch.no_grad()
        for tokens in tokenBatches do
            use _scope = torch.NewDisposeScope()
            let struct (_, cache) = model.RunWithCache(tokens, (fun n -> n = hookName))
            use cache = cache
            let act = cache.[hookName]
            let s =
                match store with
                | Some s -> s
                | None ->
                    let s = ActivationStore(int act.shape.[act.shape.Length - 1], hookName, settings)
                    store <- Some s
                    s
            s.Add act
        match store with
        | Some s -> s
        | None -> invalidArg (nameof tokenBatches) "no token batches were given to collect activations from"

    interface IDisposable with
        member _.Dispose() =
            for t in pending do t.Dispose()
            pending.Clear()
