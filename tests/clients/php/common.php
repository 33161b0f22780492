<?php
// Shared by mysqli.php and pdo.php: where to connect, how to record what a scenario saw.
//
// A script runs every scenario (or those named on the command line) against DB_HOST:DB_PORT
// and prints one JSON object: {"scenario": [[label, value], ...], ...}. The same script runs
// straight to the server and through the proxy; the pytest side compares the two outputs, so
// nothing printed here may depend on which one it talked to (no thread ids, no ports).

declare(strict_types=1);

error_reporting(E_ALL);
ini_set('display_errors', 'stderr');

function env(string $name): string
{
    $v = getenv($name);
    if ($v === false) {
        fwrite(STDERR, "missing environment variable $name\n");
        exit(2);
    }
    return $v;
}

final class Cfg
{
    public static function host(): string { return env('DB_HOST'); }
    public static function port(): int { return (int) env('DB_PORT'); }
    public static function user(): string { return env('DB_USER'); }
    public static function password(): string { return env('DB_PASSWORD'); }
    public static function db(): string { return env('DB_NAME'); }
}

/** JSON cannot hold arbitrary bytes: strings that are not UTF-8 are shown as hex. */
function norm(mixed $v): mixed
{
    if (is_string($v) && preg_match('//u', $v) !== 1) {
        return 'hex:' . bin2hex($v);
    }
    if (is_float($v)) {
        return ['float', sprintf('%.10g', $v)];
    }
    if (is_array($v)) {
        return array_map('norm', $v);
    }
    if (is_object($v)) {
        return norm(get_object_vars($v));
    }
    return $v;
}

/** What one scenario saw, in order. */
final class Log
{
    /** @var list<array{0: string, 1: mixed}> */
    public array $items = [];

    public function add(string $label, mixed $value): void
    {
        $this->items[] = [$label, norm($value)];
    }
}

/**
 * Run the scenarios (name => callable(Log)), each on its own; an exception ends only its own
 * scenario and is recorded with its class, code and message, as a value to compare.
 *
 * @param array<string, callable(Log): void> $scenarios
 */
function run_scenarios(array $scenarios, array $argv): void
{
    $only = array_slice($argv, 1);
    $out = [];
    foreach ($scenarios as $name => $fn) {
        if ($only && !in_array($name, $only, true)) {
            continue;
        }
        $log = new Log();
        try {
            $fn($log);
        } catch (Throwable $e) {
            $log->add('exception', [get_class($e), $e->getCode(), $e->getMessage()]);
        }
        $out[$name] = $log->items;
    }
    echo json_encode($out, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR), "\n";
}

/** A temporary file with these bytes, removed at exit. */
function temp_file(string $data): string
{
    $path = tempnam(sys_get_temp_dir(), 'mpp-php-');
    file_put_contents($path, $data);
    register_shutdown_function(static fn () => @unlink($path));
    return $path;
}
