// progrl's Ludii worker: one long-lived JVM that compiles and plays game descriptions.
//
// Written for progrl (Apache-2.0). It contains no Ludii code: it is compiled at first use against
// the Ludii jar the user supplies, and calls only Ludii's stable compile / game / context /
// playout API (compiler.Compiler, game.Game, other.context.Context, other.trial.Trial).
//
// Protocol (docs/ludii.md): JSON lines. The worker reads one request object per line on stdin
// and writes one reply object per line on stdout, ASCII only (non-ASCII characters escaped).
// Ludii prints to System.out itself, so before anything else System.out is pointed away from the
// protocol channel (to stderr with --verbose, else discarded); only this class writes to the
// real stdout.
//
//   startup  -> {"ready": true, "protocol": 1, "ludii_version": "...", "warmup_s": 1.2}
//   {"id": 1, "op": "ping"}                                   -> {"id": 1, "ok": true}
//   {"id": 2, "op": "eval", "game": "...", "playouts": 100, "max_turns": 500,
//    "budget_s": 5.0, "seed": 0, "repeat": 1}
//       -> {"id": 2, "ok": true, "verdict": "playable" | "not_playable" | "not_compiled"
//           | "budget_exceeded" | "engine_error", "message": null | "...", "players": 2,
//           "playouts": 100, "balance": 0.9 | null, "completion": 0.8 | null,
//           "drawishness": 0.8 | null, "mean_turns": 9.1 | null,
//           "compile_s": 0.1, "play_s": 0.2, "inproc_s": 0.3}
//   {"id": 3, "op": "expand", "game": "..."} -> {"id": 3, "ok": true, "expanded": "..." | null,
//                                               "message": null | "..."}
//   {"id": 4, "op": "ludemes"} -> {"id": 4, "ok": true, "ludemes": [...], "constants": [...]}
//   a request that cannot be served -> {"id": N or null, "ok": false, "message": "..."}
//
// The worker exits on end of input, and when its parent process dies. A request that runs
// too long is not interrupted here (Ludii does not check interrupts): the parent kills the JVM.

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeSet;

import org.apache.commons.rng.core.source64.SplitMix64;

import compiler.Compiler;
import game.Game;
import main.grammar.Description;
import main.grammar.Report;
import main.grammar.Symbol;
import main.options.UserSelections;
import other.RankUtils;
import other.context.Context;
import other.trial.Trial;

public final class ProgrlLudiiWorker
{
	static final int PROTOCOL = 1;
	static final int MAX_MESSAGE = 400;
	// A two-player game written for the warm-up: it loads the compiler, the grammar and the
	// playout code so that the first real request is not charged for class loading.
	static final String WARMUP_GAME =
		"(game \"Warmup\" (players 2) (equipment {(board (square 3)) (piece \"Disc\" Each)}) "
		+ "(rules (play (move Add (to (sites Empty)))) (end (if (is Line 3) (result Mover Win)))))";

	static PrintStream protocol;
	static PrintStream diagnostics;

	public static void main(final String[] args) throws Exception
	{
		boolean verbose = false;
		int warmupPlayouts = 20;
		for (int i = 0; i < args.length; i++)
		{
			if (args[i].equals("--verbose"))
				verbose = true;
			else if (args[i].equals("--warmup") && i + 1 < args.length)
				warmupPlayouts = Integer.parseInt(args[++i]);
		}
		protocol = new PrintStream(new FileOutputStream(FileDescriptor.out), false, "US-ASCII");
		diagnostics = System.err;
		final PrintStream sink = new PrintStream(OutputStream.nullOutputStream());
		System.setOut(verbose ? System.err : sink);
		if (!verbose)
			System.setErr(sink);
		watchParent();

		final long t0 = System.nanoTime();
		if (warmupPlayouts > 0)
			evaluate(WARMUP_GAME, warmupPlayouts, 50, 60.0, 0L);
		final Map<String, Object> ready = new LinkedHashMap<>();
		ready.put("ready", Boolean.TRUE);
		ready.put("protocol", Integer.valueOf(PROTOCOL));
		ready.put("ludii_version", ludiiVersion());
		ready.put("warmup_s", Double.valueOf(seconds(t0)));
		send(ready);

		final BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
		String line;
		while ((line = in.readLine()) != null)
		{
			if (line.isBlank())
				continue;
			Object id = null;
			Map<String, Object> reply;
			try
			{
				final Object parsed = new Json(line).parseDocument();
				if (!(parsed instanceof Map))
					throw new IllegalArgumentException("request is not a JSON object");
				@SuppressWarnings("unchecked")
				final Map<String, Object> request = (Map<String, Object>) parsed;
				id = request.get("id");
				reply = serve(request);
			}
			catch (final OutOfMemoryError e)
			{
				throw e; // the JVM runs with -XX:+ExitOnOutOfMemoryError: the parent sees a crash
			}
			catch (final Throwable e)
			{
				reply = new LinkedHashMap<>();
				reply.put("ok", Boolean.FALSE);
				reply.put("message", describe(e));
			}
			final Map<String, Object> out = new LinkedHashMap<>();
			out.put("id", id);
			out.putAll(reply);
			send(out);
		}
	}

	static Map<String, Object> serve(final Map<String, Object> request)
	{
		final String op = string(request, "op");
		final Map<String, Object> reply = new LinkedHashMap<>();
		switch (op)
		{
		case "ping":
			reply.put("ok", Boolean.TRUE);
			return reply;
		case "eval":
		{
			final String game = string(request, "game");
			final int playouts = integer(request, "playouts");
			final int maxTurns = integer(request, "max_turns");
			final double budget = number(request, "budget_s");
			final long seed = request.containsKey("seed") ? (long) number(request, "seed") : 0L;
			final int repeat = request.containsKey("repeat") ? integer(request, "repeat") : 1;
			if (playouts < 1 || maxTurns < 1 || budget <= 0 || repeat < 1)
				throw new IllegalArgumentException("playouts, max_turns, budget_s and repeat must be positive");
			final long t0 = System.nanoTime();
			Map<String, Object> result = null;
			for (int r = 0; r < repeat; r++)
				result = evaluate(game, playouts, maxTurns, budget, seed);
			reply.put("ok", Boolean.TRUE);
			reply.putAll(result);
			reply.put("inproc_s", Double.valueOf(seconds(t0) / repeat));
			return reply;
		}
		case "expand":
		{
			final Description description = new Description(string(request, "game"));
			String expanded = null;
			String message = null;
			try
			{
				final Report report = new Report();
				parser.Expander.expand(description, new UserSelections(new ArrayList<String>()), report, false);
				if (report.isError())
					message = String.join("; ", report.errors());
				else
					expanded = description.expanded();
			}
			catch (final OutOfMemoryError e)
			{
				throw e;
			}
			catch (final Throwable e)
			{
				message = describe(e);
			}
			reply.put("ok", Boolean.TRUE);
			reply.put("expanded", expanded);
			reply.put("message", clip(message));
			return reply;
		}
		case "ludemes":
		{
			final TreeSet<String> ludemes = new TreeSet<>();
			final TreeSet<String> constants = new TreeSet<>();
			for (final Symbol s : grammar.Grammar.grammar().symbols())
			{
				final String token = s.token();
				if (token == null || token.isEmpty())
					continue;
				switch (s.ludemeType())
				{
				case Ludeme:
				case SuperLudeme:
				case SubLudeme:
				case Structural:
					ludemes.add(token);
					break;
				case Constant:
					constants.add(token);
					break;
				default:
					break;
				}
			}
			reply.put("ok", Boolean.TRUE);
			reply.put("ludemes", new ArrayList<Object>(ludemes));
			reply.put("constants", new ArrayList<Object>(constants));
			return reply;
		}
		default:
			throw new IllegalArgumentException("unknown op '" + op + "'");
		}
	}

	// --------------------------------------------------------------------- evaluation

	static Map<String, Object> evaluate(final String text, final int playouts, final int maxTurns,
			final double budget, final long seed)
	{
		final Map<String, Object> r = new LinkedHashMap<>();
		final long t0 = System.nanoTime();
		Game game = null;
		String message = null;
		try
		{
			final Report report = new Report();
			game = (Game) Compiler.compile(new Description(text), new UserSelections(new ArrayList<String>()), report, false);
			if (report.isError())
			{
				message = String.join("; ", report.errors());
				game = null;
			}
		}
		catch (final OutOfMemoryError e)
		{
			throw e;
		}
		catch (final Exception e)
		{
			message = describe(e);
			game = null;
		}
		catch (final Throwable e) // StackOverflowError and other engine failures
		{
			return verdict(r, "engine_error", "compile: " + describe(e), t0, System.nanoTime());
		}
		final long t1 = System.nanoTime();
		if (game == null)
			return verdict(r, "not_compiled", message == null ? "the compiler returned no game" : message, t0, t1);
		if (seconds(t0) > budget)
			return verdict(r, "budget_exceeded", "compile took longer than the budget", t0, t1);

		final int players = game.players().count();
		r.put("players", Integer.valueOf(players));
		game.setMaxTurns(Math.min(maxTurns, game.getMaxTurnLimit()));
		final Random random = new Random(seed);
		final int[] wins = new int[players + 1];
		int done = 0;
		int decided = 0;
		int drawn = 0;
		long turns = 0;
		try
		{
			for (int i = 0; i < playouts; i++)
			{
				final Trial trial = new Trial(game);
				final Context context = new Context(game, trial);
				context.rng().restoreState(new SplitMix64(Long.valueOf(seed + 1000003L * (i + 1))).saveState());
				game.start(context);
				game.playout(context, null, 1.0, null, 0, -1, random);
				done++;
				turns += trial.numTurns();
				if (trial.status() != null && trial.status().winner() != 0)
					decided++;
				final double[] utilities = RankUtils.agentUtilities(context);
				boolean positive = false;
				for (int p = 1; p <= players && p < utilities.length; p++)
				{
					if (utilities[p] > 0.0)
						positive = true;
					if (utilities[p] >= 1.0)
						wins[p]++;
				}
				if (!positive)
					drawn++;
				if (seconds(t0) > budget && i + 1 < playouts)
				{
					r.put("playouts", Integer.valueOf(done));
					return verdict(r, "budget_exceeded", "budget of " + budget + "s spent after " + done + " playouts",
							t0, t1);
				}
			}
		}
		catch (final OutOfMemoryError e)
		{
			throw e;
		}
		catch (final Exception e)
		{
			r.put("playouts", Integer.valueOf(done));
			return verdict(r, "not_playable", "playout: " + describe(e), t0, t1);
		}
		catch (final Throwable e)
		{
			r.put("playouts", Integer.valueOf(done));
			return verdict(r, "engine_error", "playout: " + describe(e), t0, t1);
		}
		r.put("playouts", Integer.valueOf(done));
		final double meanTurns = turns / (double) done;
		r.put("mean_turns", Double.valueOf(meanTurns));
		r.put("completion", Double.valueOf(decided / (double) done));
		if (players >= 2)
		{
			double maxGap = 0.0;
			for (int a = 1; a <= players; a++)
				for (int b = a + 1; b <= players; b++)
					maxGap = Math.max(maxGap, Math.abs(wins[a] - wins[b]) / (double) done);
			r.put("balance", Double.valueOf(1.0 - maxGap));
			r.put("drawishness", Double.valueOf(1.0 - drawn / (double) done));
		}
		if (meanTurns < 2.0)
			return verdict(r, "not_playable", "fewer than 2 turns per playout on average", t0, t1);
		return verdict(r, "playable", null, t0, t1);
	}

	static Map<String, Object> verdict(final Map<String, Object> r, final String verdict, final String message,
			final long t0, final long t1)
	{
		final Map<String, Object> out = new LinkedHashMap<>();
		out.put("verdict", verdict);
		out.put("message", clip(message));
		for (final String key : new String[] { "players", "playouts", "balance", "completion", "drawishness", "mean_turns" })
			out.put(key, r.get(key));
		if (out.get("playouts") == null)
			out.put("playouts", Integer.valueOf(0));
		out.put("compile_s", Double.valueOf((t1 - t0) / 1e9));
		out.put("play_s", Double.valueOf((System.nanoTime() - t1) / 1e9));
		return out;
	}

	// --------------------------------------------------------------------- helpers

	static String ludiiVersion()
	{
		try
		{
			return String.valueOf(Class.forName("main.Constants").getField("LUDEME_VERSION").get(null));
		}
		catch (final Throwable e)
		{
			return "unknown";
		}
	}

	static void watchParent()
	{
		final ProcessHandle parent = ProcessHandle.current().parent().orElse(null);
		if (parent == null)
			return;
		final Thread t = new Thread(() -> {
			while (true)
			{
				try
				{
					Thread.sleep(500);
				}
				catch (final InterruptedException e)
				{
					return;
				}
				if (!parent.isAlive())
					Runtime.getRuntime().halt(3);
			}
		}, "progrl-parent-watch");
		t.setDaemon(true);
		t.start();
	}

	static double seconds(final long t0)
	{
		return (System.nanoTime() - t0) / 1e9;
	}

	static String describe(final Throwable e)
	{
		String m = e.getMessage();
		if (m == null || m.isBlank())
			m = e.getClass().getSimpleName();
		else
			m = e.getClass().getSimpleName() + ": " + m.strip();
		return clip(m);
	}

	static String clip(final String s)
	{
		if (s == null)
			return null;
		final String one = s.replaceAll("\\s+", " ").strip();
		return one.length() <= MAX_MESSAGE ? one : one.substring(0, MAX_MESSAGE - 3) + "...";
	}

	static String string(final Map<String, Object> m, final String key)
	{
		final Object v = m.get(key);
		if (!(v instanceof String))
			throw new IllegalArgumentException("field '" + key + "' must be a string");
		return (String) v;
	}

	static double number(final Map<String, Object> m, final String key)
	{
		final Object v = m.get(key);
		if (!(v instanceof Number))
			throw new IllegalArgumentException("field '" + key + "' must be a number");
		return ((Number) v).doubleValue();
	}

	static int integer(final Map<String, Object> m, final String key)
	{
		final double d = number(m, key);
		if (d != Math.rint(d) || Math.abs(d) > Integer.MAX_VALUE)
			throw new IllegalArgumentException("field '" + key + "' must be an integer");
		return (int) d;
	}

	static void send(final Map<String, Object> obj)
	{
		final StringBuilder sb = new StringBuilder();
		Json.write(obj, sb);
		protocol.print(sb.append('\n'));
		protocol.flush();
	}

	// --------------------------------------------------------------------- JSON

	/** A small JSON reader and writer (objects, arrays, strings, numbers, booleans, null). */
	static final class Json
	{
		private final String s;
		private int i = 0;

		Json(final String s)
		{
			this.s = s;
		}

		Object parseDocument()
		{
			final Object v = value();
			space();
			if (i != s.length())
				throw error("trailing characters");
			return v;
		}

		private IllegalArgumentException error(final String what)
		{
			return new IllegalArgumentException("bad JSON at " + i + ": " + what);
		}

		private void space()
		{
			while (i < s.length() && (s.charAt(i) == ' ' || s.charAt(i) == '\t' || s.charAt(i) == '\r' || s.charAt(i) == '\n'))
				i++;
		}

		private Object value()
		{
			space();
			if (i >= s.length())
				throw error("unexpected end");
			final char c = s.charAt(i);
			if (c == '{')
				return object();
			if (c == '[')
				return array();
			if (c == '"')
				return string();
			if (s.startsWith("true", i)) { i += 4; return Boolean.TRUE; }
			if (s.startsWith("false", i)) { i += 5; return Boolean.FALSE; }
			if (s.startsWith("null", i)) { i += 4; return null; }
			return number();
		}

		private Map<String, Object> object()
		{
			final Map<String, Object> m = new LinkedHashMap<>();
			i++;
			space();
			if (i < s.length() && s.charAt(i) == '}') { i++; return m; }
			while (true)
			{
				space();
				if (i >= s.length() || s.charAt(i) != '"')
					throw error("expected a key");
				final String k = string();
				space();
				if (i >= s.length() || s.charAt(i) != ':')
					throw error("expected ':'");
				i++;
				m.put(k, value());
				space();
				if (i >= s.length())
					throw error("unexpected end");
				final char c = s.charAt(i++);
				if (c == '}')
					return m;
				if (c != ',')
					throw error("expected ',' or '}'");
			}
		}

		private List<Object> array()
		{
			final List<Object> a = new ArrayList<>();
			i++;
			space();
			if (i < s.length() && s.charAt(i) == ']') { i++; return a; }
			while (true)
			{
				a.add(value());
				space();
				if (i >= s.length())
					throw error("unexpected end");
				final char c = s.charAt(i++);
				if (c == ']')
					return a;
				if (c != ',')
					throw error("expected ',' or ']'");
			}
		}

		private String string()
		{
			final StringBuilder sb = new StringBuilder();
			i++;
			while (true)
			{
				if (i >= s.length())
					throw error("unterminated string");
				final char c = s.charAt(i++);
				if (c == '"')
					return sb.toString();
				if (c != '\\')
				{
					sb.append(c);
					continue;
				}
				if (i >= s.length())
					throw error("unterminated escape");
				final char e = s.charAt(i++);
				switch (e)
				{
				case '"': sb.append('"'); break;
				case '\\': sb.append('\\'); break;
				case '/': sb.append('/'); break;
				case 'b': sb.append('\b'); break;
				case 'f': sb.append('\f'); break;
				case 'n': sb.append('\n'); break;
				case 'r': sb.append('\r'); break;
				case 't': sb.append('\t'); break;
				case 'u':
					if (i + 4 > s.length())
						throw error("bad \\u escape");
					sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
					i += 4;
					break;
				default:
					throw error("bad escape");
				}
			}
		}

		private Number number()
		{
			final int start = i;
			while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0)
				i++;
			if (start == i)
				throw error("unexpected character");
			final String t = s.substring(start, i);
			try
			{
				if (t.indexOf('.') < 0 && t.indexOf('e') < 0 && t.indexOf('E') < 0)
					return Long.valueOf(t);
				return Double.valueOf(t);
			}
			catch (final NumberFormatException ex)
			{
				throw error("bad number");
			}
		}

		static void write(final Object v, final StringBuilder sb)
		{
			if (v == null)
				sb.append("null");
			else if (v instanceof String)
				quote((String) v, sb);
			else if (v instanceof Boolean)
				sb.append(v.toString());
			else if (v instanceof Double || v instanceof Float)
			{
				final double d = ((Number) v).doubleValue();
				sb.append(Double.isFinite(d) ? Double.toString(d) : "null");
			}
			else if (v instanceof Number)
				sb.append(v.toString());
			else if (v instanceof Map)
			{
				sb.append('{');
				boolean first = true;
				for (final Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet())
				{
					if (!first)
						sb.append(',');
					first = false;
					quote(String.valueOf(e.getKey()), sb);
					sb.append(':');
					write(e.getValue(), sb);
				}
				sb.append('}');
			}
			else if (v instanceof List)
			{
				sb.append('[');
				boolean first = true;
				for (final Object o : (List<?>) v)
				{
					if (!first)
						sb.append(',');
					first = false;
					write(o, sb);
				}
				sb.append(']');
			}
			else
				quote(v.toString(), sb);
		}

		static void quote(final String str, final StringBuilder sb)
		{
			sb.append('"');
			for (int k = 0; k < str.length(); k++)
			{
				final char c = str.charAt(k);
				if (c == '"' || c == '\\')
					sb.append('\\').append(c);
				else if (c == '\n')
					sb.append("\\n");
				else if (c == '\t')
					sb.append("\\t");
				else if (c < 0x20 || c > 0x7e)
					sb.append(String.format("\\u%04x", (int) c));
				else
					sb.append(c);
			}
			sb.append('"');
		}
	}
}
