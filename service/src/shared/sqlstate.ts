// Owns the Postgres SQLSTATE codes the service acts on, by name (Postgres's own condition names, appendix A of its
// manual), and how to read one off an error. Everything that tests a SQLSTATE imports it from here.

export const SQLSTATE = {
  uniqueViolation: '23505',
  duplicateObject: '42710',
  duplicateDatabase: '42P04',
  undefinedTable: '42P01',
  objectInUse: '55006',
  dependentObjectsStillExist: '2BP01',
  lockNotAvailable: '55P03',
  queryCanceled: '57014',
  diskFull: '53100',
  outOfMemory: '53200',
  tooManyConnections: '53300',
  internalError: 'XX000',
  /** COPY … FROM PROGRAM: the program failed (its exit code in the DETAIL). */
  externalRoutineException: '38000',
} as const;

/** SQLSTATE classes: the first two characters of a code. */
export const SQLSTATE_CLASS = {
  connectionException: '08',
  insufficientResources: '53',
} as const;

/** 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 57P04 database_dropped. */
export const SHUTDOWN_SQLSTATES: readonly string[] = ['57P01', '57P02', '57P03', '57P04'];

/** A role or its NOLOGIN access role of that name exists: 42710, or 23505 when two CREATE ROLEs race. */
export const DUPLICATE_ROLE_SQLSTATES: readonly string[] = [SQLSTATE.duplicateObject, SQLSTATE.uniqueViolation];

const SQLSTATE_SHAPE = /^[0-9A-Z]{5}$/;

/** The SQLSTATE an error carries (pg sets `code`), or undefined for an error that is not Postgres's. */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && SQLSTATE_SHAPE.test(code) ? code : undefined;
}
