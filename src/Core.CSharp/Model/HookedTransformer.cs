using MechInterp.Hooks;
using MechInterp.IO;
using MechInterp.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// A GPT-style decoder whose every activation can be read and replaced through named hook points
/// (TransformerLens names and shapes). tokens [batch, pos] int64 → logits [batch, pos, d_vocab].
/// A batched model (<see cref="Batched"/>) is N independent decoders of one configuration in the same
/// tensors: every parameter and activation has a leading instance dimension, one forward and backward
/// serves all, and <see cref="Instance"/> takes one out as an ordinary model.
/// </summary>
public sealed partial class HookedTransformer : nn.Module<Tensor, Tensor>
{
    public DecoderConfig Config { get; }
    public Embed embed;
    public PosEmbed? pos_embed;
    public ModuleList<TransformerBlock> blocks;
    public Norm ln_final;
    public Unembed unembed;
    public readonly HookPoint hook_embed, hook_pos_embed;
    private readonly HookRegistry hooks;
    private readonly int[]? seeds;

    public HookedTransformer(DecoderConfig config) : this(config, null) { }

    private HookedTransformer(DecoderConfig config, int[]? seeds, bool shapesOnly = false) : base("HookedTransformer")
    {
        TorchRuntime.EnsureLoaded();
        Config = config.Validate();
        this.seeds = seeds;
        hooks = new HookRegistry(batched: seeds is not null);
        var init = new Init(config, seeds, shapesOnly);
        embed = new Embed(config, init);
        hook_embed = hooks.Add(HookNames.Embed);
        if (config.positional_embedding_type == "standard")
        {
            pos_embed = new PosEmbed(config, init);
            hook_pos_embed = hooks.Add(HookNames.PosEmbed);
        }
        else hook_pos_embed = hooks.Inactive(HookNames.PosEmbed);
        blocks = new ModuleList<TransformerBlock>(Enumerable.Range(0, config.n_layers)
            .Select(layer => new TransformerBlock(layer, config, init, hooks)).ToArray());
        ln_final = new Norm("ln_final", "ln_final", config, init, hooks);
        unembed = new Unembed(config, init);
        RegisterComponents();
    }

    /// <summary>
    /// N decoders of one configuration as one batched model, instance i initialized exactly as
    /// <c>new HookedTransformer(config with { seed = seeds[i] })</c>. It takes tokens [instance, batch, pos]
    /// (or [batch, pos], the same for every instance) and returns logits [instance, batch, pos, d_vocab];
    /// its hooks see activations with the instance dimension first, so an intervention may differ per instance.
    /// </summary>
    public static HookedTransformer Batched(DecoderConfig config, IReadOnlyList<int> seeds)
    {
        ArgumentNullException.ThrowIfNull(seeds);
        if (seeds.Count == 0) throw new ArgumentException("a batched model needs at least one instance: seeds is empty", nameof(seeds));
        return new HookedTransformer(config, seeds.ToArray());
    }

    /// <summary>
    /// Stacks ordinary models of one configuration (seeds may differ) into a batched model holding copies of
    /// their weights, instance i being models[i].
    /// </summary>
    public static HookedTransformer Stack(IReadOnlyList<HookedTransformer> models)
    {
        ArgumentNullException.ThrowIfNull(models);
        if (models.Count == 0) throw new ArgumentException("nothing to stack: models is empty", nameof(models));
        for (int i = 0; i < models.Count; i++)
        {
            if (models[i].IsBatched) throw new ArgumentException($"model {i} is already batched; stack ordinary models", nameof(models));
            if (models[i].Config with { seed = 0 } != models[0].Config with { seed = 0 })
                throw new ArgumentException($"model {i}'s config differs from model 0's beyond the seed: {models[i].Config.ToJson()} vs {models[0].Config.ToJson()}", nameof(models));
        }
        var batched = new HookedTransformer(models[0].Config, models.Select(m => m.Config.seed).ToArray());
        using var _ = no_grad();
        foreach (var (name, p) in batched.named_parameters())
            p.copy_(stack(models.Select(m => m.StateDict()[name]).ToArray()));
        return batched;
    }

    /// <summary>Whether this is a batched model (a leading instance dimension on every parameter and activation).</summary>
    public bool IsBatched => seeds is not null;

    /// <summary>Instances of a batched model; null for an ordinary one.</summary>
    public int? Instances => seeds?.Length;

    /// <summary>Each instance's seed in a batched model (the config's seed is instance 0's); [config.seed] for an ordinary one.</summary>
    public IReadOnlyList<int> Seeds => seeds ?? [Config.seed];

    /// <summary>Instance i of a batched model as an ordinary model with a copy of its weights (config seed = its seed) and its tokenizer.</summary>
    public HookedTransformer Instance(int i)
    {
        if (seeds is null) throw new InvalidOperationException("Instance(i) takes one instance out of a batched model; this model is not batched");
        if (i < 0 || i >= seeds.Length) throw new ArgumentOutOfRangeException(nameof(i), i, $"instance {i} is outside [0, {seeds.Length})");
        var single = new HookedTransformer(Config with { seed = seeds[i] });
        var mine = StateDict();
        using var _ = no_grad();
        foreach (var (name, p) in single.named_parameters())
            p.copy_(mine[name][i]);
        single.Tokenizer = tokenizer;
        return single;
    }

    /// <summary>Every hook point by name, in the order the forward pass reaches them.</summary>
    public HookRegistry Hooks => hooks;

    /// <summary>The summed router losses of the MoE blocks from the last forward pass (one per instance when batched); null for dense models.</summary>
    public Tensor? AuxiliaryLoss =>
        blocks.Select(b => (b.mlp as Moe)?.LastAuxLoss).Where(l => l is not null)
              .Aggregate((Tensor?)null, (sum, l) => sum is null ? l : sum.add(l!));

    /// <summary>
    /// tokens [batch, pos] (or [pos]) int64 → logits [batch, pos, d_vocab]; batched: tokens [instance, batch, pos]
    /// (or [batch, pos] for every instance) → logits [instance, batch, pos, d_vocab].
    /// </summary>
    public override Tensor forward(Tensor tokens) => Run(tokens, blocks);

    /// <summary>
    /// The forward pass through the blocks in the given order instead of 0 .. n_layers − 1: leaving a block out
    /// deletes that layer, swapping two indices swaps the layers (model surgery as in Lad et al. 2024); an empty
    /// order goes from the embedding straight to the unembedding. Same tokens and logits as <see cref="forward"/>.
    /// </summary>
    public Tensor ForwardThroughBlocks(Tensor tokens, IReadOnlyList<int> order)
    {
        ArgumentNullException.ThrowIfNull(order);
        foreach (int layer in order)
            if (layer < 0 || layer >= Config.n_layers)
                throw new ArgumentOutOfRangeException(nameof(order), layer, $"block {layer} is outside [0, {Config.n_layers}) in order [{string.Join(", ", order)}]");
        return Run(tokens, order.Select(layer => blocks[layer]));
    }

    private Tensor Run(Tensor tokens, IEnumerable<TransformerBlock> path)
    {
        // A hook that runs the model it is attached to would recurse until the stack overflows, which kills the process.
        running ??= [];
        if (running.Contains(this))
            throw new InvalidOperationException(
                $"forward was called again while it runs, from the hook on '{HookPoint.Running?.Name ?? "?"}': a hook must not run the model " +
                "it is attached to (run another model, or cache what the hook needs in a run before this one)");
        running.Add(this);
        try { return RunOnce(tokens, path); }
        finally { running.Remove(this); }
    }

    /// <summary>The models whose forward is running on this thread.</summary>
    [ThreadStatic] private static List<HookedTransformer>? running;

    private Tensor RunOnce(Tensor tokens, IEnumerable<TransformerBlock> path)
    {
        tokens = TokenCheck.Validate(tokens, Config, Instances);              // [instance, batch, pos]
        var resid = hook_embed.Run(embed.forward(tokens));                    // [instance, batch, pos, d_model]
        if (pos_embed is not null)
            resid = resid.add(hook_pos_embed.Run(pos_embed.forward(tokens)));
        foreach (var block in path)
            resid = block.forward(resid);
        var logits = unembed.forward(ln_final.forward(resid));                // [instance, batch, pos, d_vocab]
        return IsBatched ? logits : logits.squeeze(0);
    }

    /// <summary>Same as <see cref="forward"/>.</summary>
    public Tensor Forward(Tensor tokens) => forward(tokens);

    /// <summary>
    /// Runs with hooks attached for this call only; they are removed when it ends, also when it throws.
    /// </summary>
    public Tensor RunWithHooks(Tensor tokens, params Hook[] fwdHooks)
    {
        var attached = Attach(fwdHooks, observer: false);
        try { return forward(tokens); }
        finally { Detach(attached); }
    }

    /// <summary>
    /// Runs and records the activations whose names pass <paramref name="namesFilter"/> (all when null),
    /// optionally with hooks (e.g. patching) attached; the cache records what the hooks produced.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter = null, params Hook[] fwdHooks)
    {
        var store = new Dictionary<string, Tensor>();
        var cacheHooks = CachingHooks(namesFilter, store);
        // User hooks first, so the cache holds what they produced.
        var attached = Attach(fwdHooks, observer: false);
        attached.AddRange(Attach(cacheHooks, observer: true));
        try
        {
            var logits = forward(tokens);
            return (logits, new ActivationCache(store));
        }
        catch
        {
            foreach (var t in store.Values) t.Dispose();
            throw;
        }
        finally { Detach(attached); }
    }

    /// <summary>
    /// Runs forward with <paramref name="fwdHooks"/>, takes the scalar <paramref name="metric"/> of the logits and
    /// backpropagates it with <paramref name="bwdHooks"/> attached (TransformerLens's dir="bwd"): each backward hook
    /// sees the gradient of the metric with respect to its activation, in the activation's shape, and may return a
    /// replacement that flows on to earlier activations and the parameters. Every hook is removed when the call
    /// ends, also when it throws (an exception in a backward hook surfaces here, after the backward pass).
    /// Returns the metric's value, detached. Parameters' .grad accumulate as after any backward (zero_grad first
    /// when that matters); activations of integer dtype (expert indices) have no gradient and no backward hook runs there.
    /// </summary>
    public Tensor RunWithBackwardHooks(Tensor tokens, Func<Tensor, Tensor> metric, Hook[] bwdHooks, params Hook[] fwdHooks)
    {
        ArgumentNullException.ThrowIfNull(metric);
        ArgumentNullException.ThrowIfNull(bwdHooks);
        if (!is_grad_enabled())
            throw new InvalidOperationException("backward hooks need autograd, but gradients are disabled here (called inside no_grad()?)");
        var run = new BackwardRun();
        var backward = new List<(HookPoint, HookFn)>();
        var attached = Attach(fwdHooks, observer: false);
        try
        {
            AttachBackward(bwdHooks, run, backward);
            var value = metric(forward(tokens));
            if (value is null || value.numel() != 1 || !value.is_floating_point())
                throw new ArgumentException(value is null ? "the metric returned null" :
                    $"the metric must be one floating-point value to backpropagate, got {value.dtype} [{string.Join(", ", value.shape)}]", nameof(metric));
            if (!value.requires_grad)
                throw new ArgumentException("the metric does not depend on the logits through autograd (it was detached or computed under no_grad)", nameof(metric));
            value.backward();
            if (run.Error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(run.Error);
            return value.detach();
        }
        finally
        {
            run.Ended = true;
            Detach(attached);
            foreach (var (point, fn) in backward) point.RemoveBackward(fn);
        }
    }

    /// <summary>
    /// One forward and one backward of the scalar <paramref name="metric"/>: the activations and the gradients of the
    /// metric with respect to them, for the hook points <paramref name="namesFilter"/> accepts (all when null), as two
    /// caches with the same keys and shapes (TransformerLens's cache of fwd and bwd hooks, what attribution patching
    /// needs). Forward hooks (e.g. patching) run first and are what the caches see. Dispose both caches.
    /// </summary>
    public (Tensor Metric, ActivationCache Activations, ActivationCache Gradients) RunWithCacheAndGradients(
        Tensor tokens, Func<Tensor, Tensor> metric, Func<string, bool>? namesFilter = null, params Hook[] fwdHooks)
    {
        var activations = new Dictionary<string, Tensor>();
        var gradients = new Dictionary<string, Tensor>();
        var gradientHooks = hooks.Points.Values
            .Where(p => namesFilter is null || namesFilter(p.Name))
            .Select(p => new Hook(p.Name, (grad, hp) =>
            {
                var kept = grad.detach().clone().DetachFromDisposeScope();
                if (gradients.Remove(hp.Name, out var earlier))
                {
                    // A block run twice (ForwardThroughBlocks) reaches its hook points twice: the gradients add.
                    using (earlier) kept.add_(earlier);
                }
                gradients[hp.Name] = kept;
                return null;
            }))
            .ToArray();
        try
        {
            var value = RunWithBackwardHooks(tokens, metric, gradientHooks, [.. fwdHooks, .. CachingHooks(namesFilter, activations)]);
            return (value, new ActivationCache(activations), new ActivationCache(gradients));
        }
        catch
        {
            foreach (var t in activations.Values.Concat(gradients.Values)) t.Dispose();
            throw;
        }
    }

    private Hook[] CachingHooks(Func<string, bool>? namesFilter, Dictionary<string, Tensor> store) =>
        hooks.Points.Values
            .Where(p => namesFilter is null || namesFilter(p.Name))
            .Select(p => new Hook(p.Name, (act, hp) =>
            {
                store[hp.Name] = act.detach().DetachFromDisposeScope();
                return null;
            }))
            .ToArray();

    private void AttachBackward(IEnumerable<Hook> bwdHooks, BackwardRun run, List<(HookPoint, HookFn)> attached)
    {
        foreach (var hook in bwdHooks)
        {
            if (hook.ExactName is { } name && !hooks.Points.ContainsKey(name))
                _ = hooks[name];   // throws, listing the hook names; the caller detaches what was attached
            foreach (var point in hooks.Points.Values.Where(p => hook.Filter(p.Name)))
            {
                point.AddBackward(hook.Fn, run);
                attached.Add((point, hook.Fn));
            }
        }
    }

    private List<(HookPoint, HookFn)> Attach(IEnumerable<Hook> fwdHooks, bool observer)
    {
        var attached = new List<(HookPoint, HookFn)>();
        foreach (var hook in fwdHooks)
        {
            if (hook.ExactName is { } name && !hooks.Points.ContainsKey(name))
            {
                Detach(attached);
                _ = hooks[name];   // throws, listing the hook names
            }
            foreach (var point in hooks.Points.Values.Where(p => hook.Filter(p.Name)))
            {
                point.Add(hook.Fn, observer);
                attached.Add((point, hook.Fn));
            }
        }
        return attached;
    }

    private static void Detach(List<(HookPoint, HookFn)> attached)
    {
        foreach (var (point, fn) in attached) point.Remove(fn);
    }

    /// <summary>Removes every hook from every hook point (after an interrupted interactive session).</summary>
    public void ResetHooks()
    {
        foreach (var p in hooks.Points.Values) p.Clear();
    }

    /// <summary>
    /// TransformerLens's process_weights_ as a new model (this one unchanged): fold_ln, center_writing_weights,
    /// center_unembed, fold_value_biases; see <see cref="WeightProcessing"/> for what each leaves and when it is defined.
    /// </summary>
    public HookedTransformer ProcessWeights(bool foldLn = true, bool centerWritingWeights = true, bool centerUnembed = true, bool foldValueBiases = true) =>
        WeightProcessing.Process(this, foldLn, centerWritingWeights, centerUnembed, foldValueBiases);

    /// <summary>Parameters by TransformerLens name ("blocks.0.attn.W_Q" ...).</summary>
    public IReadOnlyDictionary<string, Tensor> StateDict() =>
        named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);

    /// <summary>
    /// Writes a safetensors checkpoint (config in __metadata__["config"], a batched model's seeds in
    /// __metadata__["instance_seeds"]); atomic: temp file then rename.
    /// </summary>
    public void Save(string path) => Checkpoint.Save(this, path);

    /// <summary>Reads a checkpoint written by <see cref="Save"/> (or by Python with the same names and shapes).</summary>
    public static HookedTransformer Load(string path) => Checkpoint.Load(path);

    /// <summary>A model of the same kind (ordinary, or batched with these seeds) and config, freshly initialized.</summary>
    internal static HookedTransformer Create(DecoderConfig config, int[]? seeds) => new(config, seeds);

    /// <summary>
    /// Every parameter's name and shape for this config (and instances), from the model's own constructors with
    /// the parameters on the meta device: exact, and nothing allocated.
    /// </summary>
    internal static Dictionary<string, long[]> ParameterShapes(DecoderConfig config, int[]? seeds)
    {
        using var shapes = new HookedTransformer(config, seeds, shapesOnly: true);
        return shapes.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
    }
}
